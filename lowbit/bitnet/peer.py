"""BitNet side by side with a peer engine (ik_llama.cpp): the benchmark's 2B4T-shape weights in each engine's own
fastest ternary type, TQ2_0 here and IQ2_BN there, against each engine's own Q4_0, in the same interleaved rounds.

The peer cannot read TQ2_0, so its files start from an F16 copy of the benchmark's master GGUF (made with the
kit's llama-quantize, removed once the peer's files exist) and are quantized by the peer's own llama-quantize,
with Q6_K embeddings like the kit's files. The peer runs loaded into memory with its run-time repack and huge
pages, its fastest CPU setup for prompts; its `bitnet` graph ignores the ReLU² key (SiLU costs the same), so only
the speeds compare, not the outputs.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from lowbit import LowbitError
from lowbit.bitnet import LOAD_FLAGS, bench
from lowbit.toolchain.build import active_build
from lowbit.ui import print_table, step

PEER_TYPES = ("IQ2_BN", "Q4_0")  # the peer's ternary type, and its reference
# ik_llama.cpp's llama-bench: loaded into memory, run-time repack, transparent huge pages (its fastest prompt
# speed here; with the file mapping and no repack its decode is up to ~10 % faster and its prompts 40 % slower)
PEER_LOAD = ("-mmp", "0", "-rtr", "1", "-thp", "1")
KIT_TYPES = ("TQ2_0", "Q4_0")


def peer_tool(peer: Path, name: str) -> Path:
    """`name` in the peer's build folder (`bin/` or `build/bin/` under it, or the folder itself)."""
    for folder in (peer / "bin", peer / "build" / "bin", peer):
        if (folder / name).is_file():
            return folder / name
    raise LowbitError(f"--peer {peer}: no {name} in it, its bin/ or its build/bin/; give the peer's build folder")


def peer_files(peer: Path, shape: bench.Shape = bench.FULL, folder: Path | None = None) -> dict[str, Path]:
    """The shape's weights quantized by the peer's llama-quantize to each of PEER_TYPES (cached beside the kit's)."""
    folder = folder or bench.bench_folder()
    bench.quantized_files(folder, shape)  # the master GGUF, made if missing
    master = bench.shape_file(shape, "master", folder)
    outs = {q: bench.shape_file(shape, f"peer-{q}", folder) for q in PEER_TYPES}
    if all(p.exists() for p in outs.values()):
        return outs
    f16 = bench.shape_file(shape, "F16", folder)
    try:
        if not f16.exists():
            step(f"llama-quantize F16 (the peer reads no TQ2_0; {master.name} -> {f16.name})")
            bench.quantize(active_build().tool("llama-quantize"), master, f16, "F16")
        for qtype, out in outs.items():
            if not out.exists():
                step(f"the peer's llama-quantize {qtype}")
                bench.quantize(peer_tool(peer, "llama-quantize"), f16, out, qtype, what="the peer's llama-quantize",
                               options=("--token-embedding-type", "q6_K", "--output-tensor-type", "q6_K"))
    finally:
        f16.unlink(missing_ok=True)
    return outs


def side_by_side(peer: Path, rounds: int = 6, threads: int = 2, folder: Path | None = None) -> dict:
    """pp64 and tg32 tok/s of the kit's TQ2_0 and Q4_0 and the peer's IQ2_BN and Q4_0, `rounds` interleaved
    rounds in alternating order, each decode followed by the read bandwidth; medians and per-round ratios."""
    if rounds < 1 or threads < 1:
        raise LowbitError(f"rounds and threads must be >= 1 (got {rounds}, {threads})")
    tool = peer_tool(peer, "llama-bench")
    folder = folder or bench.bench_folder()
    kit = bench.quantized_files(folder, bench.FULL)
    runs = [(f"kit {q}", kit[q], None, LOAD_FLAGS) for q in KIT_TYPES]
    runs += [(f"peer {q}", p, tool, PEER_LOAD) for q, p in peer_files(peer, bench.FULL, folder).items()]
    samples: dict[str, dict[str, list[float]]] = {name: {"pp": [], "tg": [], "bandwidth": []} for name, *_ in runs}
    for r in range(rounds):
        step(f"round {r + 1}/{rounds}")
        for name, path, exe, load in runs[::-1] if r % 2 else runs:
            got = bench.llama_bench(path, threads, tool=exe, load=load)
            samples[name]["pp"].append(got["pp"])
            samples[name]["tg"].append(got["tg"])
            samples[name]["bandwidth"].append(bench.bandwidth_after(threads))
    speed = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    ratios = {}
    for engine, ternary in (("kit", "TQ2_0"), ("peer", "IQ2_BN")):
        t, q = samples[f"{engine} {ternary}"], samples[f"{engine} Q4_0"]
        ratios[engine] = {k: statistics.median(a / b for a, b in zip(t[k], q[k], strict=True)) for k in ("pp", "tg")}
    kit_vs_peer = {k: statistics.median(a / b for a, b in zip(samples["kit TQ2_0"][k], samples["peer IQ2_BN"][k],
                                                              strict=True)) for k in ("pp", "tg")}
    return {"threads": threads, "rounds": rounds, "peer": peer.name, "speed": speed, "samples": samples,
            "ratio_to_own_q4_0": ratios, "kit_tq2_0_vs_peer_iq2_bn": kit_vs_peer, "patches": bench.active_patches(),
            "time": time.strftime("%Y-%m-%d %H:%M")}


def report(result: dict) -> None:
    """Print tok/s per engine and type, each ternary type's ratio to its engine's Q4_0, and kit vs peer."""
    rows = [(name, f"{s['pp']:.1f}", f"{s['tg']:.1f}", f"{s['bandwidth']:.1f}") for name, s in result["speed"].items()]
    print_table(f"{result['threads']} threads, medians of {result['rounds']} interleaved rounds",
                ["engine type", "pp64 tok/s", "tg32 tok/s", "read GB/s after"], rows)
    r, v = result["ratio_to_own_q4_0"], result["kit_tq2_0_vs_peer_iq2_bn"]
    print_table("ratios (medians of per-round ratios)", ["", "pp64", "tg32"], [
        ("kit TQ2_0 / kit Q4_0", f"{r['kit']['pp']:.2f}x", f"{r['kit']['tg']:.2f}x"),
        ("peer IQ2_BN / peer Q4_0", f"{r['peer']['pp']:.2f}x", f"{r['peer']['tg']:.2f}x"),
        ("kit TQ2_0 / peer IQ2_BN", f"{v['pp']:.2f}x", f"{v['tg']:.2f}x"),
    ])


def side_by_side_command(peer: str, rounds: int = 6, threads: str = "2") -> int:
    """Measure, print and store (runs/bench/bitnet-side-by-side.json) the side by side with `peer`'s build, at
    the last of the comma list `threads`."""
    try:
        count = int(threads.split(",")[-1])
    except ValueError:
        raise LowbitError(f"--threads {threads!r}: give a thread count, e.g. 2") from None
    result = side_by_side(Path(peer).expanduser(), rounds=rounds, threads=count)
    report(result)
    out = bench.results_file().with_name("bitnet-side-by-side.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"results: {out}")
    return 0
