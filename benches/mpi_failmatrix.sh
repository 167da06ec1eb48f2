#!/bin/bash
# The MPI failure matrix: N runs of each case of benches/mpi_fail_case.py (rank 1 raises, has another
# seed, NaN in its data, another architecture, is SIGKILLed); counts the runs that printed the reason.
# usage: failmatrix.sh N "mpiexec args..."  -> one line per mode: how many of N runs showed the reason
N=$1; shift
for mode in raise seed nan arch kill; do
  case $mode in raise) want="rank 1 of 2 failed: RuntimeError: rank 1 raised";; seed) want="different settings: seed";;
    nan) want="rank 1 of 2 failed: ValueError: X: contains NaN";; arch) want="different settings: layers";; kill) want="";; esac
  ok=0; rc0=0; tmax=0
  for i in $(seq $N); do
    t0=$(date +%s.%N)
    timeout 60 "$@" python3 $(dirname $0)/mpi_fail_case.py $mode > /tmp/fail.out 2>&1; rc=$?
    t=$(python3 -c "print(round($(date +%s.%N)-$t0,1))")
    [ $rc = 0 ] && rc0=$((rc0+1))
    if [ -n "$want" ] && grep -q "$want" /tmp/fail.out; then ok=$((ok+1)); fi
    [ $mode = kill ] && [ $rc != 0 ] && [ $rc != 124 ] && ok=$((ok+1))
    tmax=$(python3 -c "print(max($tmax,$t))")
  done
  echo "$mode: reason shown in $ok of $N runs; exit 0 in $rc0; slowest ${tmax}s; last: $(grep -m1 'fastbp: \(rank\|warn\)\|Error' /tmp/fail.out | cut -c1-160)"
done
