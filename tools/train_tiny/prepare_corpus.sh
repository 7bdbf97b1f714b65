#!/bin/sh
# Writes the training corpus of the shipped sample model: the King James
# Version of the Bible (public domain), as Debian's bible-kjv-text package
# provides it, read out with that package's `bible` program (bible-kjv).
#
#   tools/train_tiny/prepare_corpus.sh OUT_FILE
#
# Output: one verse per line without its number, chapters separated by one
# empty line, no book or chapter headings. About 4.2 MB, 31,000 verses,
# 1,189 chapters.
set -eu
out=${1:?usage: prepare_corpus.sh OUT_FILE}

if ! command -v bible >/dev/null 2>&1 || [ ! -e /usr/lib/bible.data ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y bible-kjv bible-kjv-text
fi

# -l100000: no line wrapping, so each verse is one line "  N text",
# indented; chapter headings ("Genesis 1", "2 Timothy 3") start in column
# one and become the chapter breaks.
bible -l100000 "gen1:1-rev22:21" | awk '
    /^ +[0-9]+ / { sub(/^ +[0-9]+ /, ""); print; started = 1; next }
    /^[^ ]/ { if (started) print ""; next }
' >"$out"
echo "$out: $(grep -c . "$out") verses, $(grep -c '^$' "$out") chapter breaks, $(wc -c <"$out") bytes"
