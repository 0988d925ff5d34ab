#!/bin/bash
# Interleaved before/after series: base tree vs new tree, standalone and replicated
# (2 brokers, --ha-replicate all, one ready backup), --confirm 100, DUR s per run.
# usage: [ORDER=new] [DUR=5] [EXTRA="qha-bench options"] [CPU=1] contrib/bench/abseries.sh BASE_TREE NEW_TREE PAIRS [PY]
# CPU=1: each figure is followed by the broker's CPU a confirmed message over the
# run (user + system, /proc/PID/stat), the primary's and then the backup's for a
# replicated run: "msgs/s(primary us/backup us)".
# PIN=1: each standalone broker and primary on core 0, each backup and the load
# generator on core 1 (taskset), so that the broker measured never shares its core.
# PY: the python whose site-packages both trees run with (PYTHONPATH picks the tree).
# One load generator for both sides: qha_bench from the new tree.
set -u
BASE=$1; NEW=$2; PAIRS=${3:-5}
PY=${4:-$PWD/.venv/bin/python}
TWISTD=$(dirname $PY)/twistd
D=$(mktemp -d /tmp/ab.XXXX)
# the new tree's two cluster brokers share one cluster secret
$PY -c "import os; print(os.urandom(32).hex())" > $D/secret; chmod 600 $D/secret
pids=()
ON0=""; ON1=""
[ -n "${PIN:-}" ] && ON0="taskset -c 0" && ON1="taskset -c 1"
start() { # tree port haport args...
  local tree=$1 port=$2 hp=$3; shift 3
  local on=$ON0; case $port in 5742|5762) on=$ON1;; esac
  PYTHONPATH=$tree $on $TWISTD -n --pidfile= --logfile=$D/$port.log qha --port tcp:$port:interface=127.0.0.1 \
    --ha-port tcp:$hp:interface=127.0.0.1 --data-dir $D/d$port --http-port none "$@" &
  pids+=($!)
}
start $BASE 5740 5750
start $NEW  5760 5770
start $BASE 5741 5751 --ha-cluster yes --ha-brokers 127.0.0.1:5751,127.0.0.1:5752 --ha-replicate all --ha-secret-file $D/secret
start $BASE 5742 5752 --ha-cluster yes --ha-brokers 127.0.0.1:5751,127.0.0.1:5752 --ha-replicate all --ha-secret-file $D/secret
start $NEW  5761 5771 --ha-cluster yes --ha-brokers 127.0.0.1:5771,127.0.0.1:5772 --ha-replicate all --ha-secret-file $D/secret
start $NEW  5762 5772 --ha-cluster yes --ha-brokers 127.0.0.1:5771,127.0.0.1:5772 --ha-replicate all --ha-secret-file $D/secret
trap 'kill ${pids[@]} 2>/dev/null; wait; rm -rf $D' EXIT
adm() { local tree=$1; shift; PYTHONPATH=$tree $PY -c "from qha.admin.cli import main; main()" "$@"; }
badm() { adm $BASE --secret-file $D/secret "$@"; }
nadm() { adm $NEW --secret-file $D/secret "$@"; }
for i in $(seq 100); do badm -b 127.0.0.1:5751 ping >/dev/null 2>&1 && nadm -b 127.0.0.1:5771 ping >/dev/null 2>&1 && break; sleep 0.2; done
badm -b 127.0.0.1:5751 promote; nadm -b 127.0.0.1:5771 promote
for i in $(seq 100); do
  badm -b 127.0.0.1:5752 ping 2>/dev/null | grep -q ready && nadm -b 127.0.0.1:5772 ping 2>/dev/null | grep -q ready && break; sleep 0.2; done
badm -b 127.0.0.1:5752 ping; nadm -b 127.0.0.1:5772 ping
bench() { PYTHONPATH=$NEW $ON1 $PY -m qha_bench.bench --queue perf-ab --confirm 100 --duration ${DUR:-5} ${EXTRA:-} --json --url amqp://guest:guest@127.0.0.1:$1/ 2>/dev/null | tail -1 | $PY -c 'import json,sys; d=json.load(sys.stdin); print(round(d.get("consumedRate") or d.get("confirmedRate") or 0))' ; }
if [ -n "${CPU:-}" ]; then  # each figure with the broker's CPU a confirmed message
FMT='
import json, os, sys
d = json.load(sys.stdin)
n = d.get("confirmed") or 1
us = 1e6 / os.sysconf("SC_CLK_TCK") / n  # a clock tick a message, in us
c = int(sys.argv[1]); b = sys.argv[2] if len(sys.argv) > 2 else ""
s = "%d(%.1fus" % (round(d.get("confirmedRate") or 0), c * us)
s += ("/%.1fus)" % (int(b) * us)) if b else ")"
print(s)
'
cpu() { local f; f=($(cut -d')' -f2 /proc/$1/stat)); echo $(( ${f[11]} + ${f[12]} )); }
declare -A PIDOF=( [5740]=0 [5760]=1 [5741]=2 [5761]=4 )
declare -A BPIDOF=( [5741]=3 [5761]=5 )
bench() { local p=${pids[${PIDOF[$1]}]} b="" c0 c1 b0 b1 out
  [ -n "${BPIDOF[$1]:-}" ] && b=${pids[${BPIDOF[$1]}]}
  c0=$(cpu $p); [ -n "$b" ] && b0=$(cpu $b)
  out=$(PYTHONPATH=$NEW $ON1 $PY -m qha_bench.bench --queue perf-ab --confirm 100 --duration ${DUR:-5} ${EXTRA:-} --json --url amqp://guest:guest@127.0.0.1:$1/ 2>/dev/null | tail -1)
  c1=$(cpu $p); [ -n "$b" ] && b1=$(cpu $b)
  echo "$out" | $PY -c "$FMT" $((c1-c0)) $([ -n "$b" ] && echo $((b1-b0)))
}
fi
for p in $(seq $PAIRS); do
  if [ "${ORDER:-base}" = new ]; then  # the new tree first in each pair
    ns=$(bench 5760); bs=$(bench 5740); nr=$(bench 5761); br=$(bench 5741)
  else
    bs=$(bench 5740); ns=$(bench 5760); br=$(bench 5741); nr=$(bench 5761)
  fi
  echo "pair $p: base-standalone $bs new-standalone $ns base-replicated $br new-replicated $nr"
done
