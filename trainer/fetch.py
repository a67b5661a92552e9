"""`trainer data fetch`: the public corpora, downloaded, checked and laid out as [recipe] data_root expects.

  DIR/meld/{train,dev,test}_sent_emo.csv                  MELD (GPL-3.0), declare-lab/MELD
  DIR/goemotions/{train,dev,test}.tsv, labels.txt,        GoEmotions (Apache-2.0),
                 ekman_mapping.json                         monologg/GoEmotions-pytorch

Each file comes from the public repository our copies in ../shared/data came from (its
PROVENANCE.md), so its SHA-256 must be the one recorded here; any other is refused, with
the file and both hashes named, and nothing is written.  A download grows a hidden
`.NAME.download` beside its target: an interrupted transfer (a dropped connection, a killed
run) continues from its end with an HTTP Range request, or starts again where the server
ignores ranges; only a complete, checked file is renamed into place (common.atomic).
IEMOCAP cannot be fetched: its licence requires a request to its owners (IEMOCAP_NOTE).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from common.atomic import replacing
from common.errors import InvalidInput, UserError

# Raw files of public GitHub repositories: BASE_URL + Remote.path.  A mirror (or a test's
# loopback server) that serves the same paths can stand in for it: `--base-url`.
BASE_URL = "https://raw.githubusercontent.com"
TIMEOUT_S = 30.0  # a connection or a read that waits longer than this counts as dropped
ATTEMPTS = 3  # transfers of one file per run; each later one resumes from where the last stopped
CHUNK = 1 << 16


class FetchError(UserError, RuntimeError):
    """A corpus file that could not be fetched or did not check; the message says which and why."""


@dataclass(frozen=True)
class Remote:
    name: str  # file name inside the corpus folder
    path: str  # URL path under the base URL
    size: int  # bytes, as in ../shared/data
    sha256: str  # of ../shared/data's copy (tests/test_fetch.py checks they still agree)


@dataclass(frozen=True)
class Source:
    folder: str  # folder under the data root (trainer.recipe.FOLDERS)
    title: str
    licence: str
    origin: str  # the repository's page
    use: str
    files: tuple[Remote, ...]


def _github(repo: str, ref: str, folder: str, files: list[tuple[str, int, str]]) -> tuple[Remote, ...]:
    return tuple(Remote(name, f"/{repo}/{ref}/{folder}/{name}", size, digest) for name, size, digest in files)


CORPORA = {
    "meld": Source(
        "meld", "MELD", "GPL-3.0", "https://github.com/declare-lab/MELD",
        "Friends dialogue transcripts, 7 emotions: the text branch of `trainer recipe real` (and --quick)",
        _github("declare-lab/MELD", "master", "data/MELD", [
            ("train_sent_emo.csv", 1119290, "d2fa2d6529cf03cac2989efec05c9b27d8fd2f4c8fc5974c7ae88aa537fa02db"),
            ("dev_sent_emo.csv", 121640, "2e89c6f8aa182d6f62f8c6331aece905ac7273ca4999660bfb5213e1d0370c1c"),
            ("test_sent_emo.csv", 294526, "8d37103938f7067600839fe29d5a114a6cd1bcdafb75bec101e06464c5006888"),
        ])),
    "goemotions": Source(
        "goemotions", "GoEmotions", "Apache-2.0", "https://github.com/monologg/GoEmotions-pytorch",
        "Reddit comments, 28 labels grouped into Ekman's 6 + neutral: text rows of `trainer recipe real`",
        _github("monologg/GoEmotions-pytorch", "master", "data/original", [
            ("train.tsv", 3519053, "1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5"),
            ("dev.tsv", 439059, "575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62"),
            ("test.tsv", 436706, "0587b2dd8b27b97352adbfc3fb083d46005c8946657fdc2b1ca8b1cc7f1f8be4"),
            ("labels.txt", 248, "45c3ef86782d2a4d7fedcd6d8c111aa0d0e94720689bd164fac94fefb4495a89"),
            ("ekman_mapping.json", 502, "7feb3c6e0ac7226ac5fb783e3ee885c21c670e5a117bb8b9cdbc5117c09a0d4b"),
        ])),
}

IEMOCAP_NOTE = (
    "IEMOCAP cannot be fetched: its licence requires a request to its owners, USC SAIL "
    "(https://sail.usc.edu/iemocap/iemocap_release.htm). Once you have it, `trainer recipe real` "
    "reads DIR/iemocap/IEMOCAP_{train,dev,test}.csv, the 6-class split of TelME "
    "(github.com/yuntaeyang/TelME, dataset/IEMOCAP_full_release; Session 5 = test), with the columns "
    "Utterance, Speaker (the utterance id, e.g. Ses01F_impro01_F000), Dialogue_ID, Start_Time, "
    "End_Time, Wav_Path, Video_Path, Emotion (ang exc fru hap neu sad). The recipe reads only the "
    "transcripts; `trainer fit --data iemocap:DIR/iemocap --media DIR` also finds the media "
    "(IEMOCAP_full_release/Session1..5).")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _transfer(url: str, partial: Path, bar: tqdm) -> None:
    """One GET that appends to `partial` from its current size on (a Range request), or rewrites
    it where the server sends the whole file; returns when the response ends, raises OSError or
    http.client.HTTPException when it is cut short, FetchError when the server cannot be used."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing past what we hold: longer than the file, so wrong
            partial.unlink()
            raise ConnectionAbortedError("the partial download was longer than the file") from None
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot reach {url} ({reason}); check the network, or give --base-url "
                         "a mirror that serves the same paths") from None
    with response:
        resumed = response.status == 206
        if resumed and not (response.headers.get("Content-Range") or "").startswith(f"bytes {have}-"):
            partial.unlink()  # a range we did not ask for: start again
            raise ConnectionAbortedError(f"the server sent {response.headers.get('Content-Range')}")
        bar.reset(total=bar.total)
        bar.update(have if resumed else 0)
        with open(partial, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def download(url: str, target: Path, remote: Remote, progress: bool = True) -> None:
    """Fetch `url` into `target`, checked against `remote`'s size and SHA-256, written atomically."""
    partial = target.with_name(f".{target.name}.download")
    label = f"{target.parent.name}/{target.name}"
    with tqdm(total=remote.size, desc=label, unit="B", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for _ in range(ATTEMPTS):
            if partial.exists() and partial.stat().st_size >= remote.size:
                break  # whole (from this run or one that was killed before the check): check it
            try:
                _transfer(url, partial, bar)
            except (OSError, http.client.HTTPException):
                continue  # cut short: the next transfer resumes from the partial file's end
            if partial.stat().st_size >= remote.size:
                break
    have = partial.stat().st_size if partial.exists() else 0
    if have < remote.size:
        raise FetchError(f"{label}: the download from {url} stopped at {have} of {remote.size} bytes "
                         f"after {ATTEMPTS} tries; run the command again to resume it")
    digest = sha256_of(partial)
    if digest != remote.sha256:
        partial.unlink()  # never resume from bytes that do not check
        raise FetchError(f"{label}: refused, the file from {url} has SHA-256 {digest} ({have} bytes) but "
                         f"the project records {remote.sha256} ({remote.size} bytes); nothing was written")
    with replacing(target) as tmp:  # fsync, rename over the target, fsync the folder
        os.replace(partial, tmp)


def fetch(corpora: list[str], to: Path, base_url: str = BASE_URL, progress: bool = True,
          log=print) -> dict[str, Path]:
    """Download and check `corpora` (names of CORPORA) into `to`/FOLDER; returns name -> folder.
    A file already there is checked and kept; one that does not check is an error, not replaced."""
    unknown = [name for name in corpora if name not in CORPORA]
    if unknown:
        raise InvalidInput(f"cannot fetch {', '.join(unknown)}: the public corpora are {', '.join(CORPORA)}")
    if not base_url.startswith(("http://", "https://")):
        raise InvalidInput(f"--base-url {base_url!r}: expected an http:// or https:// URL")
    base_url = base_url.rstrip("/")
    folders = {}
    for name in corpora:
        source = CORPORA[name]
        folder = Path(to) / source.folder
        folder.mkdir(parents=True, exist_ok=True)
        log(f"{source.title} ({source.licence}, {source.origin}) -> {folder}")
        try:
            for remote in source.files:
                target = folder / remote.name
                if target.exists():
                    digest = sha256_of(target)
                    if digest != remote.sha256:
                        raise FetchError(f"{target} is there, but its SHA-256 is {digest}, not the recorded "
                                         f"{remote.sha256}; move it away to fetch the published file")
                    log(f"  {remote.name}: already there, SHA-256 checks")
                    continue
                download(base_url + remote.path, target, remote, progress)
                log(f"  {remote.name}: {remote.size} bytes, SHA-256 checks")
        except FetchError:
            if not any(folder.iterdir()):
                folder.rmdir()  # an empty meld/ would pass `trainer recipe real --check`
            raise
        folders[name] = folder
    return folders


def fetch_command(corpora: list[str], to: Path, base_url: str, progress: bool) -> int:
    """`trainer data fetch`: every public corpus when none is named; IEMOCAP gets IEMOCAP_NOTE
    (exit 2 when it was asked for by name, as what was asked for is not there)."""
    wanted = corpora or list(CORPORA)
    unknown = sorted(set(wanted) - set(CORPORA) - {"iemocap"})
    if unknown:
        raise InvalidInput(f"unknown corpus {', '.join(unknown)}: choose from {', '.join(CORPORA)}, iemocap")
    fetched = fetch([c for c in wanted if c != "iemocap"], to, base_url, progress)
    if fetched:
        print(f"point [recipe] data_root (or $EMOTION_DATA) at {Path(to).resolve()}")
    if "iemocap" in wanted or not corpora:
        print(IEMOCAP_NOTE, file=sys.stderr)
    return 2 if "iemocap" in wanted else 0
