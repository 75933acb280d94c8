"""Stand-ins for git, cmake, clang and bitnet.cpp's tools, for testing lowbit.bitnet.engine's orchestration offline.

One script, installed under each tool's name (it dispatches on its own name). Every call appends
{"tool", "argv", "cwd", "cc", "cxx"} to $FAKE_LOG. They create the outputs the real tools would (a source
tree with the files lowbit touches, build/bin/<target>, GGUF files), so caching, temporary-folder-then-rename
and the error paths run for real. Failures are switched on with environment variables:
FAKE_GIT_OFFLINE, FAKE_GIT_FAIL=fetch|submodule, FAKE_FORK_SHA, FAKE_CMAKE_FAIL=configure|build,
FAKE_QUANT_FAIL, FAKE_CLANG_VERSION (what `clang-NN --version` claims).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

BITNET_COMMIT = "01eb415772c342d9f20dc42772f1583ae1e5b102"
FORK_COMMIT = "1f86f058de0c3f4098dedae2ae8653c335c868a1"

MAD_CPP = """// excerpt shaped like src/ggml-bitnet-mad.cpp
void ggml_vec_dot_i2_i8_s_Nx1(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by) {
        int8_t * y_col = y + col * by;
}
void other() {
        const int8_t * y_col = y + col * by;
}
"""

CODEGEN = """import sys, pathlib
inc = pathlib.Path("include"); inc.mkdir(exist_ok=True)
(inc / "bitnet-lut-kernels.h").write_text("// generated with " + " ".join(sys.argv[1:]) + "\\n")
(inc / "kernel_config.ini").write_text("[fake]\\n")
"""

PREPROCESS = """import argparse, shutil
p = argparse.ArgumentParser(); p.add_argument("--input"); p.add_argument("--output"); a = p.parse_args()
shutil.copy(a.input, a.output)
"""

CONVERTER = """import sys, pathlib
import gguf  # must come from the fork's gguf-py (PYTHONPATH), not the kit's
assert getattr(gguf, "FORK", False), "converter imported the kit's gguf, not the fork's: " + gguf.__file__
args = sys.argv[1:]
model_dir = pathlib.Path(args[0]); out = pathlib.Path(args[args.index("--outfile") + 1])
assert (model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()
out.write_bytes(b"GGUF-f32 " + (model_dir / "model.safetensors").read_bytes()[:16])
"""


def record(tool: str) -> None:
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"tool": tool, "argv": sys.argv[1:], "cwd": os.getcwd(),
                                "cc": os.environ.get("CC"), "cxx": os.environ.get("CXX")}) + "\n")


def install(bin_dir: Path, names: list[str]) -> None:
    """Write this script under each of `names` in `bin_dir`, runnable by the current interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    body = f"#!{sys.executable}\n" + Path(__file__).read_text()
    for name in names:
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def git(argv: list[str]) -> int:
    if argv[0] == "ls-remote":
        if os.environ.get("FAKE_GIT_OFFLINE"):
            print(f"fatal: unable to access '{argv[-2]}/': Could not resolve host: github.com", file=sys.stderr)
            return 128
        print(f"{BITNET_COMMIT}\tHEAD")
        return 0
    if argv[0] == "init":
        repo = Path(argv[-1])
        (repo / ".git").mkdir(parents=True)
        return 0
    assert argv[0] == "-C", argv
    repo, argv = Path(argv[1]), argv[2:]
    git_dir = repo / ".git"
    if argv[0] == "remote":
        (git_dir / "remote").write_text(argv[-1])
    elif argv[0] == "fetch":
        if os.environ.get("FAKE_GIT_FAIL") == "fetch":
            print("fatal: unable to access 'https://github.com/microsoft/BitNet/': Could not resolve host",
                  file=sys.stderr)
            return 128
        for pct, done in ((50, 5), (100, 10)):
            sys.stderr.write(f"Receiving objects: {pct:3d}% ({done}/10)\r")
        sys.stderr.write("Receiving objects: 100% (10/10), done.\n")
        (git_dir / "FETCH_HEAD").write_text(argv[-1])
    elif argv[0] == "checkout":
        (git_dir / "HEAD").write_text((git_dir / "FETCH_HEAD").read_text())
        files = {"CMakeLists.txt": "project(bitnet.cpp)\n", "src/ggml-bitnet-mad.cpp": MAD_CPP,
                 "utils/codegen_tl2.py": CODEGEN, "utils/codegen_tl1.py": CODEGEN,
                 "utils/preprocess-huggingface-bitnet.py": PREPROCESS,
                 "utils/convert-ms-to-gguf-bitnet.py": CONVERTER, "setup_env.py": "# fake\n"}
        for rel, text in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
    elif argv[0] == "submodule":
        if os.environ.get("FAKE_GIT_FAIL") == "submodule":
            print("fatal: remote error: upload-pack: not our ref " + FORK_COMMIT, file=sys.stderr)
            return 128
        sub = repo / "3rdparty" / "llama.cpp"
        (sub / ".git").mkdir(parents=True)
        (sub / ".git" / "HEAD").write_text(os.environ.get("FAKE_FORK_SHA", FORK_COMMIT))
        (sub / "gguf-py" / "gguf").mkdir(parents=True)
        (sub / "gguf-py" / "gguf" / "__init__.py").write_text("FORK = True\n")
        sys.stderr.write("Receiving objects: 100% (3/3), done.\n")
    elif argv[0] == "rev-parse":
        head = git_dir / "HEAD"
        if not head.exists():
            print("fatal: not a git repository", file=sys.stderr)
            return 128
        print(head.read_text())
    else:
        print(f"fake git: unexpected {argv}", file=sys.stderr)
        return 2
    return 0


def cmake(argv: list[str]) -> int:
    if argv[0] == "-S":
        build = Path(argv[argv.index("-B") + 1])
        if os.environ.get("FAKE_CMAKE_FAIL") == "configure":
            print("CMake Error: the fake configure failed")
            return 1
        (build / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY={build}\n")
        print("-- The CXX compiler identification is Clang 19.1.7")
        return 0
    assert argv[0] == "--build", argv
    build = Path(argv[1])
    targets = argv[argv.index("--target") + 1:]
    for i, target in enumerate(targets):
        print(f"[{(i + 1) * 100 // (len(targets) + 1):3d}%] Building CXX object {target}.cpp.o")
        if os.environ.get("FAKE_CMAKE_FAIL") == "build":
            print("src/ggml-bitnet-mad.cpp:811:18: error: fake compile error")
            return 2
    install(build / "bin", targets)
    print("[100%] Built target " + targets[-1])
    return 0


def clang(argv: list[str], name: str) -> int:
    if argv == ["--version"]:
        print(os.environ.get("FAKE_CLANG_VERSION", f"Debian clang version {name.rsplit('-', 1)[-1]}.1.7"))
        print("Target: x86_64-pc-linux-gnu")
        return 0
    return 1


def llama_tool(argv: list[str], name: str) -> int:
    if argv == ["--version"]:
        print("version: 3962 (1f86f058)", file=sys.stderr)
        return 0
    if name == "llama-quantize":
        src, dst, qtype = argv[0], argv[1], argv[2]
        if os.environ.get("FAKE_QUANT_FAIL"):
            print("llama_model_quantize: failed to quantize: fake", file=sys.stderr)
            return 1
        print(f"[   1/   1] blk.0.attn_q.weight - [  256,   256], type =    f32, converting to {qtype.lower()} .. done")
        Path(dst).write_bytes(b"GGUF-i2s " + Path(src).read_bytes())
        return 0
    model = Path(argv[argv.index("-m") + 1])
    if not model.exists():
        print(f"llama_model_load: error loading model: failed to open {model}", file=sys.stderr)
        return 1
    if name == "llama-perplexity":
        print("Final estimate: PPL = 12.3456 +/- 0.10000", file=sys.stderr)
        return 0
    print(argv[argv.index("-p") + 1] + " Paris.")
    return 0


def main() -> int:
    name = Path(sys.argv[0]).name
    record(name)
    argv = sys.argv[1:]
    if name == "git":
        return git(argv)
    if name == "cmake":
        return cmake(argv)
    if name.startswith("clang"):
        return clang(argv, name)
    return llama_tool(argv, name)


if __name__ == "__main__":
    sys.exit(main())
