"""A minimal CAS client for the worker: batched reads and writes, ByteStream for large
blobs, and the REAPI digest of bytes."""

import hashlib
import uuid

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc
from buildgrid._protos.google.rpc import code_pb2

# Blobs up to this size go through Batch{Read,Update}Blobs; larger ones through ByteStream.
BATCH_LIMIT = 1 << 20
CHUNK = 1 << 20


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def digest_of(data):
    """The REAPI digest (SHA-256 and size) of `data`."""
    return re_pb2.Digest(hash=_sha256(data), size_bytes=len(data))


class Cas:
    """Minimal CAS client: batched reads and writes, ByteStream for large blobs."""

    def __init__(self, channel, instance):
        self.instance = instance
        self.cas = re_grpc.ContentAddressableStorageStub(channel)
        self.bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)

    def _resource(self, digest, upload=False):
        parts = [self.instance] if self.instance else []
        if upload:
            parts += ["uploads", str(uuid.uuid4())]
        parts += ["blobs", digest.hash, str(digest.size_bytes)]
        return "/".join(parts)

    def read(self, digests):
        """Returns {hash: bytes} for the given digests."""
        out = {}
        small, batch, size = [], [], 0
        for d in {d.hash: d for d in digests}.values():
            if d.size_bytes == 0:
                out[d.hash] = b""
            elif d.size_bytes > BATCH_LIMIT:
                req = bytestream_pb2.ReadRequest(resource_name=self._resource(d))
                out[d.hash] = b"".join(r.data for r in self.bytestream.Read(req))
            else:
                small.append(d)
        for d in small:
            if batch and size + d.size_bytes > BATCH_LIMIT:
                self._read_batch(batch, out)
                batch, size = [], 0
            batch.append(d)
            size += d.size_bytes
        if batch:
            self._read_batch(batch, out)
        return out

    def _read_batch(self, digests, out):
        resp = self.cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=digests)
        )
        for r in resp.responses:
            if r.status.code != code_pb2.OK:
                raise RuntimeError(f"CAS read {r.digest.hash}: {r.status.message or r.status.code}")
            out[r.digest.hash] = r.data

    def write(self, blobs):
        """Uploads {hash: (digest, bytes)} that the server lacks."""
        if not blobs:
            return
        missing = self.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance, blob_digests=[d for d, _ in blobs.values()]
            )
        ).missing_blob_digests
        batch, size = [], 0
        for d in missing:
            data = blobs[d.hash][1]
            if d.size_bytes > BATCH_LIMIT:
                self._write_stream(d, data)
                continue
            if batch and size + d.size_bytes > BATCH_LIMIT:
                self._write_batch(batch)
                batch, size = [], 0
            batch.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=data))
            size += d.size_bytes
        if batch:
            self._write_batch(batch)

    def _write_batch(self, requests):
        resp = self.cas.BatchUpdateBlobs(
            re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance, requests=requests)
        )
        for r in resp.responses:
            if r.status.code != code_pb2.OK:
                raise RuntimeError(
                    f"CAS write {r.digest.hash}: {r.status.message or r.status.code}"
                )

    def _write_stream(self, digest, data):
        name = self._resource(digest, upload=True)

        def requests():
            offset = 0
            while True:
                chunk = data[offset : offset + CHUNK]
                last = offset + len(chunk) >= len(data)
                yield bytestream_pb2.WriteRequest(
                    resource_name=name if offset == 0 else "",
                    write_offset=offset,
                    finish_write=last,
                    data=chunk,
                )
                offset += len(chunk)
                if last:
                    return

        self.bytestream.Write(requests())

    def get_tree(self, root):
        """Returns {hash: Directory} for every directory under root."""
        dirs = {}
        req = re_pb2.GetTreeRequest(instance_name=self.instance, root_digest=root)
        for resp in self.cas.GetTree(req):
            for d in resp.directories:
                dirs[_sha256(d.SerializeToString())] = d
        if root.hash not in dirs:  # Re-serialization may differ; fetch the root itself.
            d = re_pb2.Directory()
            d.ParseFromString(self.read([root])[root.hash])
            dirs[root.hash] = d
        return dirs
