#!/usr/bin/env python
"""Topic subscriber: binds one server-named queue per binding key given on the
command line (seed tutorial). Env: AMQP_URL, SEED_NS, SEED_TIMEOUT, SEED_COUNT.
"""
import os
import sys

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.exchange_declare(exchange=NS + 'topic_logs', exchange_type='topic')

result = channel.queue_declare(queue='', exclusive=True)
queue_name = result.method.queue

binding_keys = sys.argv[1:]
if not binding_keys:
    sys.stderr.write("Usage: %s [binding_key]...\n" % sys.argv[0])
    sys.exit(1)

for binding_key in binding_keys:
    channel.queue_bind(exchange=NS + 'topic_logs', queue=queue_name, routing_key=binding_key)

print(' [*] Waiting for logs. To exit press CTRL+C', flush=True)

count = int(os.environ.get("SEED_COUNT", "0"))
received = 0


def callback(ch, method, properties, body):
    global received
    print(" [x] %r:%r" % (method.routing_key, body), flush=True)
    received += 1
    if count and received >= count:
        ch.stop_consuming()


channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
connection.call_later(float(os.environ.get("SEED_TIMEOUT", "30")), channel.stop_consuming)

channel.start_consuming()
connection.close()
