from collections.abc import Collection

MAX_DEPTH: int

class CanonicalError(ValueError): ...

def canonical(body: bytes, fields: Collection[bytes] | None = None, prefix: bytes = b"") -> bytes: ...
