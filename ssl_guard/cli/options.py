"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

DATA = typer.Argument(..., help="Image folders, .tar shards, folders of shards or brace patterns like shards-{000..009}.tar.")
OUT_RUN = typer.Option(..., "--out", "-o", help="Run folder to create (must be new unless --resume).")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
WORKERS = typer.Option(2, "--workers", min=0, help="DataLoader worker processes for decoding.")
SEED = typer.Option(0, "--seed", help="Random seed; runs with the same seed give the same result.")
RESUME = typer.Option(False, "--resume", help="Continue a run folder, skipping finished stages and shards.")

DataPaths = List[str]
__all__ = ["DATA", "OUT_RUN", "DEVICE", "WORKERS", "SEED", "RESUME", "DataPaths", "Path"]
