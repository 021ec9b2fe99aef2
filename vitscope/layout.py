"""The token layout: how the token axis T of an activation maps onto the image. No torch.

Every ViT puts a few prefix tokens before its patch tokens: one CLS token (vitscope's ViT,
timm ViT, torchvision `vit_b_16`, Hugging Face ViT), CLS + a distillation token (DeiT
distilled), CLS + 4 registers (DINOv2-reg4). A dump records them by kind and count, with the
patch grid, and every plugin reads this instead of assuming one CLS token and a square grid.

    layout = TokenLayout.from_prefix([("cls", 1), ("register", 4)], grid=(16, 16),
                                     patch_size=14, image_size=224)
    layout.num_prefix_tokens   # 5
    layout.cls_index           # 0: the CLS token, None for a model without one
    layout.patches             # slice(5, None): the patch tokens, row-major over the grid
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PREFIX_KINDS = ("cls", "dist", "register")
KIND_NAMES = {"cls": "CLS", "dist": "distillation", "register": "register"}


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"token layout {what} must be one number or a (height, width) pair, "
                             f"got {value!r}")
        h, w = value
    else:
        h = w = value
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (h, w)):
        raise ValueError(f"token layout {what} must hold positive integers, got {value!r}")
    return int(h), int(w)


@dataclass(frozen=True)
class TokenLayout:
    """Prefix tokens, then the patch grid (row-major: patch p sits at (p // cols, p % cols))."""

    num_prefix_tokens: int          # tokens before the patches
    grid: tuple[int, int]           # patch grid (rows, cols)
    patch_size: tuple[int, int]     # pixels per patch (height, width); an int means square
    image_size: tuple[int, int]     # input (height, width) in pixels; an int means square
    prefix: tuple[tuple[str, int], ...] = field(default=())  # (kind, count) in token order

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        n = self.num_prefix_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"token layout num_prefix_tokens must be an integer >= 0, got {n!r}")
        set_(self, "grid", _pair(tuple(self.grid) if isinstance(self.grid, list) else self.grid,
                                 "grid"))
        set_(self, "patch_size", _pair(self.patch_size, "patch_size"))
        set_(self, "image_size", _pair(self.image_size, "image_size"))
        prefix = tuple((str(k), int(c)) for k, c in self.prefix) if self.prefix else (
            (("cls", 1),) + ((("other", n - 1),) if n > 1 else ()) if n else ())
        if sum(c for _, c in prefix) != n or any(c < 1 for _, c in prefix):
            raise ValueError(f"token layout prefix {list(prefix)} does not add up to "
                             f"{n} prefix tokens")
        set_(self, "prefix", prefix)

    @classmethod
    def from_prefix(cls, prefix, grid, patch_size, image_size) -> "TokenLayout":
        prefix = tuple((str(k), int(c)) for k, c in prefix if int(c) > 0)
        return cls(sum(c for _, c in prefix), tuple(grid), patch_size, image_size, prefix)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def patches(self) -> slice:
        """The patch tokens along T."""
        return slice(self.num_prefix_tokens, None)

    def index_of(self, kind: str) -> int | None:
        """Token index of the first prefix token of `kind`, or None."""
        i = 0
        for k, c in self.prefix:
            if k == kind:
                return i
            i += c
        return None

    @property
    def cls_index(self) -> int | None:
        """Where the CLS token sits (0 for every layout vitscope knows), None without one."""
        return self.index_of("cls")

    def count(self, kind: str) -> int:
        return sum(c for k, c in self.prefix if k == kind)

    @property
    def square(self) -> bool:
        return self.grid[0] == self.grid[1]

    def describe(self) -> str:
        """"1 CLS + 4 register tokens, 16×16 patches of 14×14 px": for captions and `dump info`."""
        parts = [f"{c} {KIND_NAMES.get(k, k)}" for k, c in self.prefix] or ["no prefix"]
        ph, pw = self.patch_size
        return (f"{' + '.join(parts)} token{'s' if self.num_prefix_tokens != 1 else ''}, "
                f"{self.grid[0]}×{self.grid[1]} patches of {ph}×{pw} px")

    def to_dict(self) -> dict[str, Any]:
        return {"num_prefix_tokens": self.num_prefix_tokens,
                "prefix": [[k, c] for k, c in self.prefix],
                "grid": list(self.grid), "patch_size": list(self.patch_size),
                "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenLayout":
        """Read a stored layout; version-1 dumps stored ints for sizes and no prefix kinds."""
        if not isinstance(d, dict):
            raise ValueError(f"the token layout is a {type(d).__name__}, not a mapping")
        prefix = d.get("prefix") or ()
        if not isinstance(prefix, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in prefix):
            raise ValueError(f"the token layout prefix {prefix!r} is not a list of [kind, count]")
        return cls(int(d["num_prefix_tokens"]), tuple(d["grid"]), d["patch_size"],
                   d["image_size"], tuple((str(k), int(c)) for k, c in prefix))
