#!/usr/bin/env bash
# Latency vs throughput plot of a concurrency sweep (bench/serving/sweep.sh
# writes the .dat): three panels, median TPOT, median TTFT and median
# end-to-end latency against output throughput, points labelled with their
# concurrency. Usage: plot.sh SWEEP.dat OUT.png "TITLE"
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: plot.sh SWEEP.dat OUT.png TITLE" >&2; exit 2; }
dat=$1 png=$2 title=$3
gnuplot <<GP
set terminal pngcairo size 1500,480 font ",10" noenhanced
set output "$png"
set multiplot layout 1,3 title "$title; labels: concurrency"
set grid
set key off
set offsets graph 0.05, graph 0.05, graph 0.1, 0
set yrange [0:*]
set xlabel "output throughput (tok/s)"
set ylabel "median TPOT (ms)"
plot "$dat" using 2:4 with linespoints pt 7, "" using 2:4:(sprintf("%d",\$1)) with labels offset 0,1
set ylabel "median TTFT (ms)"
plot "$dat" using 2:3 with linespoints pt 7, "" using 2:3:(sprintf("%d",\$1)) with labels offset 0,1
set ylabel "median end-to-end latency (s)"
plot "$dat" using 2:5 with linespoints pt 7, "" using 2:5:(sprintf("%d",\$1)) with labels offset 0,1
unset multiplot
GP
