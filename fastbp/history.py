"""History export: JSON and CSV (one row per epoch; grad norms go to JSON only)."""
import csv
import json
import os

EPOCH_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_s", "lr",
              "compile_seconds")


def save_history(history, path):
    """Write ``history`` as JSON (``.json``) or CSV (``.csv``, the per-epoch columns)."""
    path = os.fspath(path)
    if not path.lower().endswith((".json", ".csv")):
        raise ValueError(f"path {path!r}: expected a file ending in .json or .csv")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".csv"):
        keys = [k for k in EPOCH_KEYS if history.get(k)]
        n = len(history["epoch"])
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys)
            for i in range(n):
                w.writerow([history[k][i] if i < len(history[k]) else "" for k in keys])
    else:
        with open(path, "w") as f:
            json.dump(history, f, indent=1)
    return path


def load_history(path):
    """A history written by ``save_history``; ValueError naming the file if it is not one."""
    path = os.fspath(path)
    try:
        if path.endswith(".csv"):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            out = {k: [] for k in (rows[0].keys() if rows else [])}
            for r in rows:
                for k, v in r.items():
                    out[k].append(float(v) if v not in ("", "None", None) else None)
        else:
            with open(path) as f:
                out = json.load(f)
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a fastbp history ({type(e).__name__}: {e})") from None
    if not isinstance(out, dict) or not isinstance(out.get("epoch"), list) or not isinstance(out.get("loss"), list):
        raise ValueError(f"{path}: not a fastbp history (expected per-epoch lists 'epoch' and 'loss')")
    n = len(out["epoch"])
    for k in EPOCH_KEYS:
        v = out.get(k)
        if v is None or (isinstance(v, list) and not v):
            continue
        if not isinstance(v, list) or len(v) != n or not all(x is None or isinstance(x, (int, float)) for x in v):
            raise ValueError(f"{path}: not a fastbp history ({k!r} must be a list of {n} numbers like 'epoch')")
    return out
