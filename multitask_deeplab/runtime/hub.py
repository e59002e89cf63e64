"""The Hugging Face Hub through ``huggingface_hub``: files come from its local cache when ``HF_HUB_OFFLINE=1`` is set
(or the network is down), and every failure becomes one line that says what to do."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
"""A Hub repo id, ``org/name``."""


def split_revision(source: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` as ``("org/name", "rev")``; no ``@``: the revision is None (the main branch)."""
    repo_id, _, revision = source.partition("@")
    return repo_id, revision or None


def is_repo_id(source: str) -> bool:
    """Whether ``source`` reads as ``org/name`` or ``org/name@revision``."""
    return REPO_ID.fullmatch(split_revision(source)[0]) is not None


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids huggingface_hub to use the network."""
    return bool(constants.HF_HUB_OFFLINE)


def cache_folder() -> str:
    """The folder of huggingface_hub's cache (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``)."""
    return str(constants.HF_HUB_CACHE)


def not_cached_message(what: str, repo_id: str) -> str:
    """Why ``repo_id`` could not be had, and how to get it onto this machine."""
    fetch = f"`hf download {repo_id}` on a machine with a network, then copy its cache folder here (or set HF_HUB_CACHE to the copy)"
    if offline():
        return f"{what} {repo_id} is not in the Hugging Face cache ({cache_folder()}) and HF_HUB_OFFLINE=1 forbids downloading it: run {fetch}, or unset HF_HUB_OFFLINE"
    return f"{what} {repo_id} could not be downloaded (no connection?) and is not in the Hugging Face cache ({cache_folder()}): check the network, or run {fetch}"


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str) -> Iterator[None]:
    """Turns huggingface_hub's errors inside the block (ours or a library's download of ``repo_id``) into one-line
    ``ValueError``s that name ``what`` and the fix."""
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise ValueError(not_cached_message(what, repo_id)) from error
    except RevisionNotFoundError as error:
        raise ValueError(f"{what} {repo_id}: the Hub repo has no such revision (branch, tag or commit)") from error
    except RepositoryNotFoundError as error:
        raise ValueError(f"{what} {repo_id}: no such Hub repo, or it is private or gated (log in with `hf auth login`)") from error
    except EntryNotFoundError as error:
        raise ValueError(f"{what} {repo_id}: the Hub repo lacks a file: {str(error).splitlines()[0]}") from error


def download(repo_id: str, filename: str, *, revision: str | None = None, what: str) -> Path:
    """One file of a Hub model repo, from the cache when it is there (and always when offline)."""
    with hub_errors(what, repo_id):
        return Path(hf_hub_download(repo_id, filename, revision=revision))


def upload_folder(folder: str | Path, repo_id: str, *, private: bool = False, message: str = "Upload with mtdl push") -> str:
    """Creates the model repo if needed and uploads ``folder`` to it as one commit; returns the commit's URL.

    Needs a network and a Hub token (``hf auth login`` or ``HF_TOKEN``).
    """
    from huggingface_hub import HfApi

    if offline():
        raise ValueError(f"pushing to {repo_id} needs the network, but HF_HUB_OFFLINE=1 forbids it: unset HF_HUB_OFFLINE")
    api = HfApi()
    with hub_errors("model repo", repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message))
