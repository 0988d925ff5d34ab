#!/bin/bash
# One series: 3M x 1 KiB backlog, publish with confirms (window 1000) then drain;
# qha in memory, qha paged (1GiB), RabbitMQ (as installed, default config; started and
# stopped with `service rabbitmq-server`); peak RSS and CPU. usage: [N=3000000] backlogseries.sh
N=${N:-3000000}
cd "$(dirname "$0")/../.."
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
hwm() { grep VmHWM /proc/$1/status | awk '{print $2/1024 " MiB"}'; }
run() { # name port pid
  local name=$1 port=$2 pid=$3
  local c0=$(cpu $pid)
  local pub=$(.venv/bin/qha-bench --url amqp://guest:guest@127.0.0.1:$port/%2F --consumers 0 --confirm 1000 --messages $N --size 1024 --queue backlog --keep-queue --progress 0 --json | python3 -c "import json,sys; r=json.load(sys.stdin); print(round(r['confirmedRate']))")
  local c1=$(cpu $pid)
  local drain=$(.venv/bin/python -m qha_bench.backlogbench --url amqp://guest:guest@127.0.0.1:$port/%2F --queue backlog --messages $N --size 1024 --pid $pid --drain-only)
  local c2=$(cpu $pid)
  echo "$name: publish $pub msgs/s, CPU/msg $(python3 -c "print(round(($c1-$c0)*10000/$N,2))") us; drain: $drain; CPU/msg $(python3 -c "print(round(($c2-$c1)*10000/$N,2))") us; peak RSS $(hwm $pid)"
}
for mode in 0 1GiB; do
  D=$(mktemp -d /tmp/backlog.XXXX)
  .venv/bin/twistd -n --pidfile= --logfile=$D/log qha --port tcp:5911:interface=127.0.0.1 --ha-port tcp:5912:interface=127.0.0.1 --http-port none --data-dir $D/d --memory-budget $mode & P=$!
  for i in $(seq 60); do (echo > /dev/tcp/127.0.0.1/5911) 2>/dev/null && break; sleep 0.5; done
  run "qha --memory-budget $mode" 5911 $P
  kill $P; wait $P; rm -rf $D
done
service rabbitmq-server start >/dev/null 2>&1 || rabbitmq-server -detached
for i in $(seq 120); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done
R=$(pgrep -f beam.smp | head -1)
run "RabbitMQ $(rabbitmqctl -q version 2>/dev/null) (default config)" 5672 $R
rabbitmqctl -q delete_queue backlog >/dev/null 2>&1
service rabbitmq-server stop >/dev/null 2>&1 || rabbitmqctl stop
