#!/usr/bin/env python
"""RPC client from the seeds (center.py): sends several increase(n) requests at
once, each with its own correlation_id, on one connection with one exclusive
server-named reply queue, and matches the answers by correlation_id.

The seed ran one thread per request on a shared BlockingConnection, which pika
does not support; here all requests are in flight together from one thread.

Usage: rpc_client.py [n ...] (default 10 20 30 40 50).
Env: AMQP_URL, SEED_NS, SEED_TIMEOUT.
"""
import os
import sys
import time
import uuid

import pika

NS = os.environ.get("SEED_NS", "")


class Center(object):
    def __init__(self):
        self.connection = pika.BlockingConnection(
            pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")))
        self.channel = self.connection.channel()
        result = self.channel.queue_declare(queue='', exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(queue=self.callback_queue,
                                   on_message_callback=self.on_response,
                                   auto_ack=True)
        self.response = {}

    def on_response(self, ch, method, props, body):
        if props.correlation_id in self.response:
            self.response[props.correlation_id] = body

    def request(self, n):
        corr_id = str(uuid.uuid4())
        self.response[corr_id] = None
        print(" [x] Requesting increase(%d)" % n, flush=True)
        self.channel.basic_publish(exchange='',
                                   routing_key=NS + 'compute_queue',
                                   properties=pika.BasicProperties(
                                       reply_to=self.callback_queue,
                                       correlation_id=corr_id,
                                   ),
                                   body=str(n))
        return corr_id

    def wait(self, corr_ids, timeout):
        deadline = time.monotonic() + timeout
        while any(self.response[c] is None for c in corr_ids):
            if time.monotonic() > deadline:
                raise SystemExit(" [!] timed out waiting for replies")
            self.connection.process_data_events(time_limit=0.1)
        return {c: int(self.response[c]) for c in corr_ids}


center = Center()
nums = [int(a) for a in sys.argv[1:]] or [10, 20, 30, 40, 50]
pending = {center.request(n): n for n in nums}
answers = center.wait(list(pending), float(os.environ.get("SEED_TIMEOUT", "30")))
for corr_id, n in pending.items():
    print(" [.] increase(%d)=%d" % (n, answers[corr_id]), flush=True)
center.connection.close()
