#!/usr/bin/env python3
"""A caller of decider's example app "bank", in Python.

Written only from schemas/README.md (the wire format) and the .avsc files,
with two libraries: confluent_kafka (librdkafka) and the Apache avro
package. On Debian: apt-get install python3-confluent-kafka python3-avro.

    # the fixed script that CI runs (cmd/decider/interop_test.go)
    python3 bank_client.py --brokers 127.0.0.1:9092 \\
        --schemas ../../schemas ../../examples/accounts --script

    # one command, its reply printed as JSON
    python3 bank_client.py --brokers 127.0.0.1:9092 \\
        --schemas ../../schemas ../../examples/accounts \\
        --account acc-1 --type Deposit --data '{"amount": 100}'

Producing uses librdkafka's DEFAULT partitioner (consistent_random, CRC32),
on purpose: most commands land on a partition their key does not hash to
with murmur2, and the worker must forward them and still decide each once.
A real client should set partitioner=murmur2_random (see the README).
"""

import argparse
import copy
import io
import json
import os
import random
import sys
import time
import uuid

import avro.errors
import avro.io
import avro.name
import avro.schema
from confluent_kafka import Consumer, Producer, TopicPartition

COMMANDS = "bank.account.commands"
REPLIES = "bank.account.replies"
NAMESPACE = "decider.examples.accounts"
REPLY = "decider.Reply"
MAGIC = b"\xc3\x01"  # Avro single-object encoding

# ---------------------------------------------------------------------------
# CRC-64-AVRO, as the Avro specification gives it ("Schema Fingerprints").

EMPTY = 0xC15D213AA4D7A795


def _crc64_table():
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


CRC64_TABLE = _crc64_table()


def crc64_avro(data):
    fp = EMPTY
    for b in data:
        fp = (fp >> 8) ^ CRC64_TABLE[(fp ^ b) & 0xFF]
    return fp


# Known answers from the README, so a broken CRC fails here and not as a
# puzzling unknown_schema from the worker.
assert crc64_avro(b'"int"') == 8247732601305521295
assert crc64_avro(b'"null"') == 7195948357588979594


def fingerprint(schema):
    """The 8 bytes on the wire: CRC-64-AVRO of the Parsing Canonical Form,
    little-endian. avro 1.11 gives the canonical form (schema.canonical_form)
    but no CRC-64-AVRO fingerprint, hence the function above."""
    return crc64_avro(schema.canonical_form.encode("utf-8")).to_bytes(8, "little")


# ---------------------------------------------------------------------------
# Schemas: every .avsc file of the given directories, by full name and by
# fingerprint.


class Schemas:
    def __init__(self, dirs):
        docs = []
        for d in dirs:
            for f in sorted(os.listdir(d)):
                if f.endswith(".avsc"):
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        docs.append((os.path.join(d, f), json.load(fh)))
        if not docs:
            raise SystemExit("no .avsc files in %s" % " ".join(dirs))
        # A file may use a record another file defines (snapshot.avsc uses
        # decider.Reply), so parse into one shared Names, retrying files
        # whose references are not known yet. A failed parse leaves names
        # half-registered, hence a trial copy per attempt.
        names = avro.name.Names()
        self.by_name = {}
        pending = docs
        while pending:
            failed = []
            for path, doc in pending:
                trial = copy.deepcopy(names)
                try:
                    schema = avro.schema.make_avsc_object(doc, trial)
                except avro.errors.SchemaParseException as e:
                    failed.append((path, doc, e))
                    continue
                names = trial
                self.by_name[schema.fullname] = schema
            if len(failed) == len(pending):
                raise SystemExit("cannot parse %s: %s" % (failed[0][0], failed[0][2]))
            pending = [(path, doc) for path, doc, _ in failed]
        self.by_fingerprint = {fingerprint(s): s for s in self.by_name.values()}

    def encode(self, name, datum):
        schema = self.by_name.get(name)
        if schema is None:
            raise SystemExit("no .avsc file defines %s" % name)
        body = io.BytesIO()
        avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(body))
        return MAGIC + fingerprint(schema) + body.getvalue()

    def decode(self, name, value):
        """Reads a single-object encoded value as record `name`, with the
        writer schema its fingerprint names."""
        if len(value) < 10 or value[:2] != MAGIC:
            raise ValueError("not Avro single-object encoding: %s" % value[:10].hex(" "))
        writer = self.by_fingerprint.get(value[2:10])
        if writer is None:
            raise ValueError(
                "unknown fingerprint %s for %s: get the newer .avsc file"
                % (value[2:10].hex(" "), name)
            )
        if writer.fullname != name:
            raise ValueError("fingerprint is %s's, want %s" % (writer.fullname, name))
        reader = avro.io.DatumReader(writer, self.by_name[name])
        body = io.BytesIO(value[10:])
        datum = reader.read(avro.io.BinaryDecoder(body))
        if body.read(1):
            raise ValueError("trailing bytes after %s" % name)
        return datum


# ---------------------------------------------------------------------------
# The client: one producer, and one consumer on our own reply partition.


def header(msg, name):
    value = None
    for k, v in msg.headers() or []:
        if k == name:
            value = v  # if a header appears twice, the last one counts
    return None if value is None else value.decode("utf-8")


class BankClient:
    def __init__(self, brokers, schemas, reply_partition=None, source="bank_client.py"):
        self.schemas = schemas
        self.source = source
        self.consumer = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": "bank_client.py",  # librdkafka wants one; assign() does not use it
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        md = self.consumer.list_topics(REPLIES, timeout=10).topics[REPLIES]
        if md.error is not None:
            raise SystemExit("reply topic %s: %s" % (REPLIES, md.error))
        n = len(md.partitions)
        if reply_partition is None:
            reply_partition = random.randrange(n)  # one partition per client instance
        if not 0 <= reply_partition < n:
            raise SystemExit("%s has partitions 0..%d" % (REPLIES, n - 1))
        self.reply_partition = reply_partition
        # Listen from the partition's end before sending anything, so no
        # reply can slip past.
        tp = TopicPartition(REPLIES, reply_partition)
        _, end = self.consumer.get_watermark_offsets(tp, timeout=10)
        self.consumer.assign([TopicPartition(REPLIES, reply_partition, end)])
        # Default partitioner on purpose: see the module docstring.
        self.producer = Producer({"bootstrap.servers": brokers})

    def send(self, account, ce_type, value, command_id):
        """Produces one command; returns the partition it landed on."""
        landed = []

        def delivered(err, msg):
            if err is not None:
                raise SystemExit("command %s not delivered: %s" % (command_id, err))
            landed.append(msg.partition())

        self.producer.produce(
            COMMANDS,
            key=account.encode("utf-8"),
            value=value,
            headers=[
                ("ce_specversion", b"1.0"),
                ("ce_id", command_id.encode("utf-8")),
                ("ce_type", ce_type.encode("utf-8")),
                ("ce_source", self.source.encode("utf-8")),
                ("ce_subject", account.encode("utf-8")),
                ("content-type", b"application/avro"),
                ("ce_replyto", REPLIES.encode("utf-8")),
                ("ce_replypartition", str(self.reply_partition).encode("utf-8")),
            ],
            on_delivery=delivered,
        )
        if self.producer.flush(10) != 0 or not landed:
            raise SystemExit("command %s not delivered in 10 s" % command_id)
        return landed[0]

    def wait(self, command_id, timeout):
        """Reads our reply partition until the reply whose key is command_id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise SystemExit("reading %s: %s" % (REPLIES, msg.error()))
            if msg.key() != command_id.encode("utf-8"):
                continue  # another caller's reply
            if header(msg, "ce_type") != REPLY:
                raise SystemExit("reply to %s has ce_type %r" % (command_id, header(msg, "ce_type")))
            if header(msg, "ce_id") != command_id + "/reply":
                raise SystemExit("reply to %s has ce_id %r" % (command_id, header(msg, "ce_id")))
            try:
                return self.schemas.decode(REPLY, msg.value())
            except (ValueError, avro.errors.AvroException) as e:
                raise SystemExit("reply to %s: %s" % (command_id, e))
        raise SystemExit(
            "no reply to %s in %g s: is a worker running, and does %s exist?"
            % (command_id, timeout, REPLIES)
        )

    def call(self, account, ce_type, datum, command_id=None, record=None, timeout=30):
        """Sends ce_type (a full name) with datum encoded as record (default:
        ce_type) and waits for its reply."""
        command_id = command_id or str(uuid.uuid4())  # a retry reuses it
        value = self.schemas.encode(record or ce_type, datum)
        landed = self.send(account, ce_type, value, command_id)
        return command_id, landed, self.wait(command_id, timeout)

    def close(self):
        self.consumer.close()


# ---------------------------------------------------------------------------
# The fixed script: each step's reply must be exactly as expected.


def run_script(client, account, timeout):
    def reply(command_id, status, version, reason="", events=0):
        return {
            "commandId": command_id,
            "aggregateId": account,
            "status": status,
            "version": version,
            "reason": reason,
            "events": events,
        }

    def step(name, ce_type, datum, want, command_id=None, record=None):
        command_id, landed, got = client.call(
            account, ce_type, datum, command_id=command_id, record=record, timeout=timeout
        )
        print(json.dumps({"step": name, "partition": landed, "reply": got}), flush=True)
        expected = want(command_id)
        if got != expected:
            raise SystemExit(
                "MISMATCH in step %r:\n  got  %s\n  want %s"
                % (name, json.dumps(got), json.dumps(expected))
            )
        return command_id

    step("open", NAMESPACE + ".OpenAccount", {"owner": "py"},
         lambda c: reply(c, "ACCEPTED", 1, events=1))
    deposit = step("deposit", NAMESPACE + ".Deposit", {"amount": 100},
                   lambda c: reply(c, "ACCEPTED", 2, events=1))
    step("withdraw", NAMESPACE + ".Withdraw", {"amount": 500},
         lambda c: reply(c, "REJECTED", 2, reason="insufficient_funds"))
    # A type the worker does not know (the payload is a Deposit's).
    step("unknown type", NAMESPACE + ".Nope", {"amount": 1},
         lambda c: reply(c, "INVALID", 0, reason="unknown_type"),
         record=NAMESPACE + ".Deposit")
    # The deposit again with the same ce_id: the first reply, not a new deposit.
    step("deposit again", NAMESPACE + ".Deposit", {"amount": 100},
         lambda c: reply(c, "ACCEPTED", 2, events=1), command_id=deposit)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", required=True, help="HOST:PORT[,HOST:PORT...]")
    p.add_argument("--schemas", nargs="+", required=True, metavar="DIR",
                   help="directories of .avsc files (decider's schemas/ and the domain's)")
    p.add_argument("--script", action="store_true", help="run the fixed script (see run_script)")
    p.add_argument("--account", default="acc-py-1", help="aggregate id (default acc-py-1)")
    p.add_argument("--type", help="command record, short (Deposit) or full name")
    p.add_argument("--data", default="{}", help="the command record as JSON")
    p.add_argument("--command-id", help="ce_id (default: a new UUID); reuse it to retry")
    p.add_argument("--reply-partition", type=int, help="of %s (default: random)" % REPLIES)
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for each reply")
    args = p.parse_args()
    if args.script == bool(args.type):
        p.error("give either --script or --type")

    client = BankClient(args.brokers, Schemas(args.schemas), args.reply_partition)
    try:
        if args.script:
            run_script(client, args.account, args.timeout)
        else:
            ce_type = args.type if "." in args.type else NAMESPACE + "." + args.type
            _, _, got = client.call(args.account, ce_type, json.loads(args.data),
                                    command_id=args.command_id, timeout=args.timeout)
            print(json.dumps(got))
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
