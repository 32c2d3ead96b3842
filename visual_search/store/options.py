"""Settings of the remote backend (a Qdrant server or cluster): collection layout, quantization,
query-time rescoring and uploads, from flags and environment variables. No Qdrant import here:
config.py reads them for every command.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..errors import VisualSearchError
from .base import _UPSERT_BATCH, QUANTIZATION_OVERSAMPLING


class StoreSettingsError(VisualSearchError, ValueError):
    """A cluster setting (flag or environment variable) has an impossible value."""


QUANTIZATION_CHOICES = ("none", "int8", "binary")


@dataclass(frozen=True)
class RemoteOptions:
    """How the collection is laid out on a Qdrant cluster, and how points are uploaded.

    The layout fields apply when the collection is *created* (Qdrant fixes shard_number then;
    replication and the rest can be changed later with Qdrant's own API). ``None`` leaves the
    server's default. See the README's "Scaling" section for which to use at which size.
    """

    shard_number: int | None = None  # shards the collection is split into (spread over the nodes)
    replication_factor: int | None = None  # copies of each shard (>= 2 survives a node loss)
    write_consistency_factor: int | None = None  # replicas that must confirm a write
    on_disk_vectors: bool = False  # original vectors memory-mapped from disk (RAM holds the quantized copy)
    on_disk_payload: bool | None = None  # payload on disk (None: the server default)
    quantization: str = "none"  # none | int8 (scalar, 4x smaller) | binary (32x smaller)
    always_ram: bool = True  # keep the quantized vectors in RAM even when the originals are on disk
    oversampling: float = QUANTIZATION_OVERSAMPLING  # query time: fetch k*oversampling, rescore exactly
    upload_parallel: int = 1  # processes qdrant-client's upload_points uses
    upload_retries: int = 3  # retries per failed batch (network blips, a node restarting)
    upload_batch: int = _UPSERT_BATCH

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATION_CHOICES:
            raise StoreSettingsError(
                f"Quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, not {self.quantization!r}."
            )
        for name in ("shard_number", "replication_factor", "write_consistency_factor"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise StoreSettingsError(f"{name} must be 1 or more, not {value}.")
        if not self.oversampling >= 1.0:
            raise StoreSettingsError(f"Oversampling must be 1 or more, not {self.oversampling}.")
        if self.upload_parallel < 1 or self.upload_retries < 0 or self.upload_batch < 1:
            raise StoreSettingsError(
                "Upload parallelism and batch size must be 1 or more, retries 0 or more."
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RemoteOptions:
        """``QDRANT_SHARDS``, ``QDRANT_REPLICAS``, ``QDRANT_WRITE_CONSISTENCY``, ``QDRANT_ON_DISK``,
        ``QDRANT_ON_DISK_PAYLOAD``, ``QDRANT_QUANTIZATION``, ``QDRANT_ALWAYS_RAM``,
        ``QDRANT_OVERSAMPLING``, ``QDRANT_UPLOAD_PARALLEL``, ``QDRANT_UPLOAD_RETRIES``."""
        env = os.environ if env is None else env
        base = cls()
        return cls(
            shard_number=_env_int(env, "QDRANT_SHARDS"),
            replication_factor=_env_int(env, "QDRANT_REPLICAS"),
            write_consistency_factor=_env_int(env, "QDRANT_WRITE_CONSISTENCY"),
            on_disk_vectors=_env_bool(env, "QDRANT_ON_DISK") or False,
            on_disk_payload=_env_bool(env, "QDRANT_ON_DISK_PAYLOAD"),
            quantization=(env.get("QDRANT_QUANTIZATION") or "none").strip().lower(),
            always_ram=_env_bool(env, "QDRANT_ALWAYS_RAM") is not False,
            oversampling=_env_float(env, "QDRANT_OVERSAMPLING", base.oversampling),
            upload_parallel=_env_int(env, "QDRANT_UPLOAD_PARALLEL") or base.upload_parallel,
            upload_retries=_env_int(env, "QDRANT_UPLOAD_RETRIES", base.upload_retries),
        )

    def with_args(self, args: argparse.Namespace) -> RemoteOptions:
        """These options overridden by whichever ``add_remote_arguments`` flags were given."""
        changes = {
            field: getattr(args, dest)
            for field, dest in _ARG_FIELDS.items()
            if getattr(args, dest, None) is not None
        }
        return replace(self, **changes) if changes else self


_ARG_FIELDS = {
    "shard_number": "qdrant_shards",
    "replication_factor": "qdrant_replicas",
    "write_consistency_factor": "qdrant_write_consistency",
    "on_disk_vectors": "qdrant_on_disk",
    "on_disk_payload": "qdrant_on_disk_payload",
    "quantization": "qdrant_quantization",
    "oversampling": "qdrant_oversampling",
    "upload_parallel": "qdrant_upload_parallel",
}


def add_remote_arguments(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Cluster flags (remote backend only; environment variables give the defaults)."""
    group.add_argument(
        "--qdrant-shards",
        type=int,
        help="shards of a new remote collection (QDRANT_SHARDS; default server's)",
    )
    group.add_argument(
        "--qdrant-replicas", type=int, help="copies of each shard on a cluster (QDRANT_REPLICAS; default 1)"
    )
    group.add_argument(
        "--qdrant-write-consistency",
        type=int,
        help="replicas that must confirm a write (QDRANT_WRITE_CONSISTENCY; default 1)",
    )
    group.add_argument(
        "--qdrant-on-disk",
        action="store_true",
        default=None,
        help="keep a new remote collection's original vectors on disk (QDRANT_ON_DISK=1)",
    )
    group.add_argument(
        "--qdrant-on-disk-payload",
        action="store_true",
        default=None,
        help="keep its payload on disk (QDRANT_ON_DISK_PAYLOAD=1)",
    )
    group.add_argument(
        "--qdrant-quantization",
        choices=QUANTIZATION_CHOICES,
        help="quantized copy searched first, rescored with the originals (QDRANT_QUANTIZATION; default none)",
    )
    group.add_argument(
        "--qdrant-oversampling",
        type=float,
        help=f"with quantization: candidates fetched per result before rescoring "
        f"(QDRANT_OVERSAMPLING; default {QUANTIZATION_OVERSAMPLING:g})",
    )
    group.add_argument(
        "--qdrant-upload-parallel",
        type=int,
        help="processes uploading batches to the remote Qdrant (QDRANT_UPLOAD_PARALLEL; default 1)",
    )


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise StoreSettingsError(f"{name} must be a whole number, not {value!r}.") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = (env.get(name) or "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise StoreSettingsError(f"{name} must be a number, not {value!r}.") from None


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    value = (env.get(name) or "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise StoreSettingsError(f"{name} must be 1/0 (or true/false), not {value!r}.")
