"""
Probe direct reply-to (amq.rabbitmq.reply-to) on the broker at 127.0.0.1:PORT with
pika, printing what each step gets, to compare qha with RabbitMQ side by side
(doc/compatibility.md):

    .venv/bin/python contrib/compat/replyto_probe.py 5672
"""
import sys, pika
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

port = int(sys.argv[1])
params = pika.ConnectionParameters("127.0.0.1", port)
RT = "amq.rabbitmq.reply-to"

def conn():
    return pika.BlockingConnection(params)

def step(name, f):
    c = conn()
    try:
        r = f(c)
        print(name, "->", r)
    except ChannelClosedByBroker as e:
        print(name, "-> channel closed", e.reply_code, e.reply_text)
    except ConnectionClosedByBroker as e:
        print(name, "-> connection closed", e.reply_code, e.reply_text)
    finally:
        try: c.close()
        except Exception: pass

print("caps", conn().__dict__ and "")
def caps(c):
    return c._impl.server_capabilities.get("direct_reply_to")
step("capability", caps)
step("consume ack", lambda c: c.channel().basic_consume(RT, lambda *a: None, auto_ack=False))
def dpassive(c):
    m = c.channel().queue_declare(RT, passive=True).method
    return (m.queue, m.message_count, m.consumer_count)
step("declare passive", dpassive)
def dactive(c):
    m = c.channel().queue_declare(RT).method
    return (m.queue, m.message_count, m.consumer_count)
step("declare active", dactive)
step("declare X", lambda c: c.channel().queue_declare(RT + "X", passive=True).method)
step("declare X active", lambda c: c.channel().queue_declare(RT + "X").method)
step("declare forged", lambda c: c.channel().queue_declare(RT + ".abc.def", passive=True).method)
step("publish no consumer", lambda c: (lambda ch: (ch.basic_publish("", "nowhere", b"x", pika.BasicProperties(reply_to=RT)), ch.queue_declare("", exclusive=True)))(c.channel()))
def second(c):
    ch = c.channel()
    ch.basic_consume(RT, lambda *a: None, auto_ack=True)
    ch.basic_consume(RT, lambda *a: None, auto_ack=True)
step("second consume", second)
def reuse(c):
    ch = c.channel()
    ch.basic_consume(RT, lambda *a: None, auto_ack=True, consumer_tag="t1")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, lambda *a: None, auto_ack=True, consumer_tag="t1")
    return "ok"
#step("reuse tag reply then queue", reuse)
def get(c):
    return c.channel().basic_get(RT)
step("basic.get", get)
def delete(c):
    return c.channel().queue_delete(RT).method
step("queue.delete", delete)
def bind(c):
    return c.channel().queue_bind(RT, "amq.direct", "k").method
step("queue.bind", bind)

def roundtrip(c, mandatory, confirm, cancel_first=False, forge=None):
    req = c.channel()
    got = []
    tag = req.basic_consume(RT, lambda ch, m, p, b: got.append((m.consumer_tag, m.delivery_tag, m.exchange, m.routing_key, m.redelivered, p.correlation_id, b)), auto_ack=True)
    q = req.queue_declare("", exclusive=True).method.queue
    req.basic_publish("", q, b"request", pika.BasicProperties(reply_to=RT, correlation_id="c1"))
    m, p, b = None, None, None
    for _ in range(50):
        m, p, b = req.basic_get(q, auto_ack=True)
        if m: break
        c.process_data_events(0.05)
    replyTo = p.reply_to
    c2 = conn()
    resp = c2.channel()
    returned = []
    resp.add_on_return_callback(lambda ch, m, p, b: returned.append((m.reply_code, m.reply_text)))
    if confirm:
        resp.confirm_delivery()
    if cancel_first:
        req.basic_cancel(tag)
    target = forge(replyTo) if forge else replyTo
    # declare check
    try:
        c3 = conn(); d = c3.channel().queue_declare(target, passive=True).method
        decl = (d.message_count, d.consumer_count); c3.close()
    except ChannelClosedByBroker as e:
        decl = (e.reply_code, e.reply_text); c3.close()
    res = None
    try:
        resp.basic_publish("", target, b"reply", pika.BasicProperties(correlation_id="c1"), mandatory=mandatory)
        res = "published"
    except Exception as e:
        res = repr(e)
    c2.process_data_events(0.3)
    for _ in range(10):
        c.process_data_events(0.05)
    c2.close()
    return dict(replyTo=replyTo[:40] + "...", len=len(replyTo), declare=decl, publish=res, returned=returned, got=got)

step("roundtrip", lambda c: roundtrip(c, False, False))
step("roundtrip mandatory", lambda c: roundtrip(c, True, False))
step("roundtrip mandatory confirm", lambda c: roundtrip(c, True, True))
step("roundtrip confirm", lambda c: roundtrip(c, False, True))
step("gone mandatory", lambda c: roundtrip(c, True, True, cancel_first=True))
step("forged mandatory", lambda c: roundtrip(c, True, True, forge=lambda r: r[:-4] + "AAAA"))
step("malformed mandatory", lambda c: roundtrip(c, True, True, forge=lambda r: RT + ".garbage"))
step("bare mandatory", lambda c: roundtrip(c, True, True, forge=lambda r: RT))
def other_exchange(c):
    req = c.channel()
    req.basic_consume(RT, lambda *a: None, auto_ack=True)
    req.exchange_declare("xx", "fanout")
    q = req.queue_declare("", exclusive=True).method.queue
    req.queue_bind(q, "xx")
    req.basic_publish("xx", "", b"request", pika.BasicProperties(reply_to=RT))
    for _ in range(50):
        m, p, b = req.basic_get(q, auto_ack=True)
        if m: return p.reply_to[:30]
        c.process_data_events(0.05)
step("rewrite on other exchange", other_exchange)
def cancel_then_publish(c):
    req = c.channel()
    tag = req.basic_consume(RT, lambda *a: None, auto_ack=True)
    req.basic_cancel(tag)
    req.basic_publish("", "nowhere", b"x", pika.BasicProperties(reply_to=RT))
    req.queue_declare("", exclusive=True)
step("cancel then publish", cancel_then_publish)
def tx(c):
    req = c.channel()
    req.basic_consume(RT, lambda *a: None, auto_ack=True)
    req.tx_select()
    req.basic_publish("", "nowhere", b"x", pika.BasicProperties(reply_to=RT))
    req.tx_commit()
    return "ok"
step("tx request", tx)
