"""
Probe direct reply-to on the broker at 127.0.0.1:PORT with raw frames (the cases
pika will not send), to compare qha with RabbitMQ side by side:

    .venv/bin/python contrib/compat/replyto_raw.py 5672
"""
import sys
from pamqp import commands
from qha.test.integration.brokerprocess import RawConnection
port = int(sys.argv[1])
def run(name, steps):
    c = RawConnection(port)
    c.handshake()
    c.openChannel(1)
    out = []
    for m in steps:
        c.sendMethod(1, m)
        try:
            ch, frame = c.readMethod(timeout=2)
            out.append(frame.name + (" %s %s" % (frame.reply_code, frame.reply_text) if hasattr(frame, "reply_code") else ""))
            if "Close" in frame.name: break
        except Exception as e:
            out.append("timeout/" + type(e).__name__)
    print(name, out)
    c.close()
RT = "amq.rabbitmq.reply-to"
run("reuse then ack", [commands.Queue.Declare(queue="", exclusive=True), commands.Basic.Consume(queue="", consumer_tag="t"), commands.Basic.Consume(queue=RT, consumer_tag="t", no_ack=False)])
run("reply tag for queue", [commands.Basic.Consume(queue=RT, consumer_tag="t", no_ack=True), commands.Queue.Declare(queue="", exclusive=True), commands.Basic.Consume(queue="", consumer_tag="t")])
run("second reply same tag", [commands.Basic.Consume(queue=RT, consumer_tag="t", no_ack=True), commands.Basic.Consume(queue=RT, consumer_tag="t", no_ack=True)])
run("delete", [commands.Queue.Delete(queue=RT)])
run("purge", [commands.Queue.Purge(queue=RT)])
