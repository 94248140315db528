#!/usr/bin/env python
"""RPC server from the seeds (compute.py): answers increase(n) = n + 1 on
'compute_queue', replying to reply_to with the request's correlation_id.

Env: AMQP_URL, SEED_NS, SEED_TIMEOUT, SEED_COUNT.
"""
import os

import pika

NS = os.environ.get("SEED_NS", "")
connection = pika.BlockingConnection(
    pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
channel = connection.channel()

channel.queue_declare(queue=NS + 'compute_queue')
print(' [*] Waiting for n', flush=True)

count = int(os.environ.get("SEED_COUNT", "0"))
served = 0


def increase(n):
    return n + 1


def request(ch, method, props, body):
    global served
    print(" [.] increase(%s)" % body.decode(), flush=True)
    response = increase(int(body))
    ch.basic_publish(exchange='',
                     routing_key=props.reply_to,
                     properties=pika.BasicProperties(correlation_id=props.correlation_id),
                     body=str(response))
    ch.basic_ack(delivery_tag=method.delivery_tag)
    served += 1
    if count and served >= count:
        ch.stop_consuming()


channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue=NS + 'compute_queue', on_message_callback=request)
connection.call_later(float(os.environ.get("SEED_TIMEOUT", "30")), channel.stop_consuming)
channel.start_consuming()
connection.close()
