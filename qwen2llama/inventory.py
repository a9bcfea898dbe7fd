"""Every file of a source folder, accounted for: converted (read into the output), carried (copied
unchanged: the license files, a reward model's value head), known and not needed (Qwen's remote code,
Trainer state, the source's own README, ...), ignored (`--ignore GLOB`), or unknown. An unknown file
that holds weights or a vocabulary — by its name or by its first bytes — stops the run: a fine-tune's
extra head must not be left behind while verify says "equivalent". `inspect`, `--dry-run` and
conversion.json show the inventory.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .qwen.checkpoint import VALUE_HEAD
from .qwen.value_head import check_value_head
from .storage import find_weights

MAX_FILES = 100_000  # files looked at in a source folder (a stated bound, like every count)
# Files a conversion does not need, by what they are (matched against the path inside the folder).
KNOWN = {
    "Qwen's remote code": ("*.py", "*.cu", "*.cpp", "*.h"),
    "Trainer and DeepSpeed state": ("optimizer.pt", "scheduler.pt", "rng_state*.pth",
                                    "training_args.bin", "trainer_state.json", "latest", "scaler.pt"),
    "results and logs": ("*results.json", "*.log", "runs/*", "events.out.tfevents*"),
    "the source's documentation": ("README*", "*.md", "LICENSE*", "NOTICE*", ".gitattributes", "*.png",
                                   "*.jpg", "*.jpeg", "*.gif", "*.svg", "*.pdf", "*.txt"),
    "tokenizer settings Qwen's code reads (ours are written anew)": ("tokenizer_config.json",
                                                                     "special_tokens_map.json",
                                                                     "added_tokens.json"),
    "hub metadata": ("configuration.json", ".git/*", ".cache/*", ".huggingface/*"),
}
# Names that hold weights or a vocabulary, and the first bytes of such files.
WEIGHTY = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.npz", "*.npy", "*.h5",
           "*.msgpack", "*.onnx", "*.tiktoken", "*.model", "global_step*/*")
MAGIC = (b"PK\x03\x04", b"GGUF", b"\x93NUMPY", b"\x80\x02", b"\x80\x03", b"\x80\x04")


@dataclass
class Inventory:
    converted: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    known: dict[str, list[str]] = field(default_factory=dict)  # what they are -> files
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """For conversion.json (sorted, lists only)."""
        return {"converted": sorted(self.converted), "carried": sorted(self.carried),
                "known": {k: sorted(v) for k, v in sorted(self.known.items())},
                "ignored": sorted(self.ignored), "unknown": sorted(self.unknown)}


def _files(folder: Path):
    """Every file under `folder`, as a path relative to it (links to folders are not followed)."""
    count = 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            count += 1
            if count > MAX_FILES:
                raise InputError(f"the source folder holds more than {MAX_FILES} files", path=folder,
                                 fix="point SRC at the checkpoint's own folder")
            yield os.path.relpath(os.path.join(root, name), folder)


def _looks_like_weights(path: Path) -> bool:
    """safetensors (a little-endian header length, then '{'), a zip (torch.save), GGUF, numpy, a
    pickle: by the first bytes, for files whose name says nothing."""
    if path.is_symlink() or not path.is_file():  # a FIFO or device would block the open: never opened
        return False
    try:
        with open(path, "rb", buffering=0) as fh:
            head = fh.read(9)
    except OSError:
        return False
    return head.startswith(MAGIC) or (len(head) == 9 and head[8:9] == b"{" and
                                      0 < int.from_bytes(head[:8], "little") < 1 << 30)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(os.path.basename(name), p) for p in patterns)


CARRIED = ("LICENSE", "NOTICE", VALUE_HEAD)  # copied unchanged into the output
INDEX = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}


def take_inventory(ckpt, ignore: tuple[str, ...] = ()) -> Inventory:
    """The inventory of a checkpoint's folder: what the conversion reads and copies, and the rest;
    a value head is checked before it is carried."""
    folder = ckpt.folder
    carried = [p for name, p in ckpt.companions.items() if name in CARRIED]
    if VALUE_HEAD in ckpt.companions:
        check_value_head(ckpt.companions[VALUE_HEAD], ckpt.config.hidden_size)
    indexes = [folder / n for n in (INDEX[ckpt.format], "config.json", "quantize_config.json")
               if (folder / n).is_file()]
    converted = [*ckpt.files, *indexes, *(p for name, p in ckpt.companions.items() if name not in CARRIED)]
    return take(folder, converted, carried, ignore, ckpt)


def take(folder: Path, converted: list[Path], carried: list[Path], ignore: tuple[str, ...] = (),
         ckpt=None) -> Inventory:
    """The inventory of `folder` given what the conversion reads (`converted`) and copies
    (`carried`); refuses an --ignore pattern that would drop what it reads, and unknown files that
    hold weights or a vocabulary (exit 2, naming them and the fix); a second weight set of the same
    tensors (safetensors beside .bin) is named, one that disagrees refused."""
    inv = Inventory()
    uses = {os.path.relpath(p, folder): "converted" for p in converted if _inside(p, folder)}
    uses |= {os.path.relpath(p, folder): "carried" for p in carried if _inside(p, folder)}
    for pattern in ignore:
        dropped = sorted(n for n in uses if _matches(n, [pattern]))
        if dropped:
            raise InputError(f"--ignore {pattern!r} matches {', '.join(dropped[:3])}, which the conversion "
                             "reads", fix="ignore only files the conversion does not use")
    for name in _files(folder):
        _place(inv, folder, name, uses.get(name), ignore)
    weighty = [n for n in inv.unknown if _matches(n, WEIGHTY) or _looks_like_weights(folder / n)]
    if weighty and ckpt is not None:
        weighty = _alternative_set(inv, ckpt, weighty)
    if weighty:
        raise _refusal(folder, weighty)
    return inv


def _alternative_set(inv: Inventory, ckpt, weighty: list[str]) -> list[str]:
    """A complete second weight set in the other format: known when its tensors have the names and
    shapes of the one read, refused when they differ; returns the weighty files still unexplained."""
    other = "bin" if ckpt.format == "safetensors" else "safetensors"
    try:
        found = find_weights(ckpt.folder, formats=(other,))
    except InputError:
        return weighty  # unreadable: left to the general refusal, which names the files
    names = {p.name for p in found.files} if found is not None else set()
    if not names or not names <= set(weighty):
        return weighty
    theirs = {n: tuple(r.shape) for n, r in found.tensors.items()}
    ours = {n: tuple(r.shape) for n, r in ckpt.tensors.items()}
    if theirs != ours:
        differ = sorted(set(theirs) ^ set(ours)) or sorted(n for n in ours if theirs[n] != ours[n])
        raise InputError(f"the folder holds {ckpt.format} and {other} weights that disagree ({len(differ)} "
                         f"tensor names or shapes, e.g. {differ[0]}); {ckpt.format} would be read",
                         path=ckpt.folder,
                         fix="keep the weight set of the model you mean, or --ignore the other")
    copy = sorted(names | ({INDEX[other]} & set(inv.unknown)))
    inv.known[f"a second copy of the weights ({other}: the same tensors; {ckpt.format} is read)"] = copy
    inv.unknown = [n for n in inv.unknown if n not in copy]
    return [n for n in weighty if n not in copy]


def _inside(path: Path, folder: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep) or \
        Path(path).parent == Path(folder)


def _place(inv: Inventory, folder: Path, name: str, use: str | None, ignore) -> None:
    if use == "converted":
        inv.converted.append(name)
    elif use == "carried":
        inv.carried.append(name)
    elif _matches(name, ignore):
        inv.ignored.append(name)
    else:
        what = next((what for what, patterns in KNOWN.items() if _matches(name, patterns)), None)
        if what is None:
            inv.unknown.append(name)
        else:
            inv.known.setdefault(what, []).append(name)


def _refusal(folder: Path, weighty: list[str]) -> InputError:
    """The one message for files that would be left behind: what they are when we can tell."""
    more = f" and {len(weighty) - 5} more" if len(weighty) > 5 else ""
    if any(os.path.basename(n) == "adapter_config.json" or os.path.basename(n).startswith("adapter_model")
           for n in weighty) or (folder / "adapter_config.json").is_file():
        return InputError(f"the folder holds a PEFT adapter ({', '.join(weighty[:5])}{more}), which a model "
                          "conversion would leave behind", path=folder,
                          fix="convert it with --adapter DIR (beside the model, or --merge), or pass "
                              "--ignore 'adapter_model*' to leave it out on purpose")
    return InputError(f"files that hold weights or a vocabulary would be left behind: "
                      f"{', '.join(weighty[:5])}{more}", path=folder,
                      fix="remove them, or pass --ignore GLOB for each to leave it out on purpose "
                          "(recorded in conversion.json)")
