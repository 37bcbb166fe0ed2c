"""PII protection: personal fields are sealed or fingerprinted before an event is written.

``policy`` says what happens to each field, ``blind_index`` and ``envelope`` are
the pure crypto, ``protect`` applies a policy to batches of records and reveals
sealed fields, and ``keystore`` holds the site's keys on disk. See docs/pii.md.
"""

from heimdall_core.pii.blind_index import (
    BLIND_INDEX_BYTES,
    SUBJECT_ID_BYTES,
    IndexKeys,
    blind_index,
    subject_id,
)
from heimdall_core.pii.keystore import DataKeys, KeyStore
from heimdall_core.pii.policy import DEFAULT_ACTIONS, SUBJECT_KINDS, Action, PiiPolicy
from heimdall_core.pii.protect import (
    DataKeyReader,
    DataKeySource,
    FieldIn,
    ProtectedField,
    ProtectedRecord,
    Protector,
    reveal,
)

__all__ = [
    "BLIND_INDEX_BYTES",
    "DEFAULT_ACTIONS",
    "SUBJECT_ID_BYTES",
    "SUBJECT_KINDS",
    "Action",
    "DataKeyReader",
    "DataKeySource",
    "DataKeys",
    "FieldIn",
    "IndexKeys",
    "KeyStore",
    "PiiPolicy",
    "ProtectedField",
    "ProtectedRecord",
    "Protector",
    "blind_index",
    "reveal",
    "subject_id",
]
