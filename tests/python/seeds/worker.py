#!/usr/bin/env python
"""Work queue worker: manual ack, prefetch_count=1, sleeps one second per '.'
in the body (seed tutorial). SEED_DOT_SECONDS scales the sleep (default 1).

Env: AMQP_URL, SEED_NS, SEED_TIMEOUT, SEED_COUNT.
"""
import os
import time

import pika

NS = os.environ.get("SEED_NS", "")
DOT = float(os.environ.get("SEED_DOT_SECONDS", "1"))
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.queue_declare(queue=NS + 'task_queue', durable=True)
print(' [*] Waiting for messages. To exit press CTRL+C', flush=True)

count = int(os.environ.get("SEED_COUNT", "0"))
done = 0


def callback(ch, method, properties, body):
    global done
    print(" [x] Received %r" % body, flush=True)
    time.sleep(body.count(b'.') * DOT)
    print(" [x] Done", flush=True)
    ch.basic_ack(delivery_tag=method.delivery_tag)
    done += 1
    if count and done >= count:
        ch.stop_consuming()


channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue=NS + 'task_queue', on_message_callback=callback)
connection.call_later(float(os.environ.get("SEED_TIMEOUT", "30")), channel.stop_consuming)

channel.start_consuming()
connection.close()
