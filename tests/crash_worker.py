"""Child process for test_crash_safety: applies a fixed sequence of writes to an index until killed."""

import sys

import torch

from lir_agent import Document, Index

DIM = 384
DOCS_PER_ADD = 40


def operations(count: int):
    """The deterministic write sequence: ("add", docs), ("upsert", docs), ("delete", ids), ("rewrite",),
    ("index_fields", fields) (rewrites every segment's document store)."""
    ops = []
    for j in range(count):
        if j % 11 == 10:
            ops.append(("index_fields", [f"n{j}"]))
        elif j % 4 == 3:
            ops.append(("delete", [f"d{j - 1}-{i}" for i in range(0, DOCS_PER_ADD, 3)]))
        elif j % 5 == 4:
            ops.append(("rewrite",))
        elif j % 7 == 6:  # with a long document stored as passages, written (and replaced) as one row
            ops.append(("upsert", [(f"d{j - 2}-{i}", f"new text {j}-{i}", 10_000 + j * 100 + i) for i in range(10)]
                        + [("long", f"a long text, version {j}. " * 20, 20_000 + j)]))
        else:
            ops.append(("add", [(f"d{j}-{i}", f"text {j}-{i}", j * 100 + i) for i in range(DOCS_PER_ADD)]))
    return ops


def embedding(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(20 + seed % 30, DIM, generator=g), dim=1)


def passages_of(text: str, matrix: torch.Tensor) -> list[tuple[int, int, int]]:
    """Three passages over ``text`` (overlapping by 10 characters) sharing the rows of ``matrix``."""
    third, rows = len(text) // 3, matrix.shape[0] // 3
    return [(0, third + 10, rows), (third, 2 * third + 10, rows), (2 * third, len(text), matrix.shape[0] - 2 * rows)]


def apply(index: Index, op) -> None:
    if op[0] in ("add", "upsert"):
        docs = [Document(i, t, {"seed": s}, passages=passages_of(t, embedding(s)) if i == "long" else None)
                for i, t, s in op[1]]
        index.add(docs, embeddings=[embedding(s) for _, _, s in op[1]], upsert=op[0] == "upsert")
    elif op[0] == "delete":
        index.delete(op[1], missing_ok=True)
    elif op[0] == "index_fields":
        index.index_fields(op[1])
    elif index.index_type == "compressed":
        index.optimize(force=True)  # re-trains the codec and rewrites every segment
    else:
        index.compact()


if __name__ == "__main__":
    index = Index.open(sys.argv[1])
    print("ready", flush=True)
    for op in operations(int(sys.argv[2])):
        apply(index, op)
    print("done", flush=True)
