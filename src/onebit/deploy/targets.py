"""Build and run the C that :func:`onebit.deploy.export_c.export_c` writes, on three targets.

- **host**: the system C compiler builds ``NAME.c`` + ``NAME_main.c`` (:func:`build_host`);
- **aarch64 Linux**: ``aarch64-linux-gnu-gcc -static``, run under ``qemu-aarch64``
  (:func:`build_aarch64`, then :func:`run_harness` with ``emulator=["qemu-aarch64"]``);
- **Cortex-M4F**: ``arm-none-eabi-gcc`` with this package's own startup code, linker script and
  semihosting harness (``cortex_m4/``: no vendor SDK, no C library), run on QEMU's
  ``mps2-an386`` board (:func:`build_cortex_m4`, :func:`run_cortex_m4`), which also measures
  instructions and stack per inference; :func:`size_report` adds flash and RAM.

The host and aarch64 programs speak the exported harness's protocol: raw little-endian images on
stdin (``NAME_INPUT_SIZE`` elements each, uint8 if ``NAME_INPUT_IS_U8`` else float32), and
``NAME_OUTPUT_SIZE`` float32 values per image on stdout. The Cortex-M4 program reads and writes
the same bytes as host files through semihosting (QEMU's stdin under ``-nographic`` is a
multiplexed console that mangles binary data). What :func:`build_cortex_m4` and
:func:`run_cortex_m4` do, by hand (``S`` the package's ``cortex_m4`` folder, the model exported
into ``out/`` as ``model``)::

    F="-std=c99 -O2 -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -ffreestanding -Wall -Wextra"
    arm-none-eabi-gcc $F -fno-tree-loop-distribute-patterns -I$S -c $S/startup.c -o startup.o
    arm-none-eabi-gcc $F -I$S -Iout -DONEBIT_MODEL=model '-DONEBIT_HEADER="model.h"' -c $S/mcu_main.c -o mcu_main.o
    arm-none-eabi-gcc $F -c out/model.c -o model.o
    arm-none-eabi-gcc $F -nostdlib -T $S/mps2_an386.ld startup.o mcu_main.o model.o -lgcc -o model.elf
    qemu-system-arm -M mps2-an386 -nographic -semihosting-config enable=on,target=native \\
        -icount shift=7 -kernel model.elf -append "images.bin logits.bin"

The program reads ``images.bin`` and writes ``logits.bin`` (paths relative to QEMU's working
directory; default ``input.bin`` and ``output.bin``), printing ``onebit: image I instructions N
stack S`` per image on stderr; its exit status is QEMU's.

**Instruction counts** (``CortexM4Result.instructions``) are the number of
instructions ``NAME_predict`` executes, from its first through its return, as QEMU counts them
(one per executed instruction, skipped conditional ones included; not cycles: a real M4 takes
more cycles than instructions for loads, multiplies, branches and flash wait states). Under
``-icount shift=7`` QEMU's virtual clock advances exactly 128 ns per instruction, and the board's
CMSDK APB timer 0 (32 bits, used instead of the 24-bit SysTick, which would wrap every 5.2 M
instructions) counts the 25 MHz system clock, one tick per 40 ns: ``K`` instructions take
``3.2 K`` ticks to within one, so ``round(ticks / 3.2)`` is ``K`` exactly (at ``shift=0``, 1 ns
per instruction, a tick would be 40 instructions). The harness subtracts
the same measurement around an empty function. The count is deterministic (same program, same
input: same number); ``tests/test_c_targets.py`` checks it against a loop of known length.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "APT_INSTALL", "AARCH64_EMULATOR", "CORTEX_M4_DIR", "CORTEX_M4_FLAGS", "ToolchainError", "MissingToolError",
    "HarnessError", "HeaderInfo", "CortexM4Result", "require_tool", "header_info", "build_host", "build_aarch64",
    "run_harness", "build_cortex_m4", "run_cortex_m4", "size_report",
]

APT_INSTALL = ("apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm "
               "gcc-aarch64-linux-gnu qemu-user")
"""The Debian/Ubuntu command installing every cross tool this module uses."""
AARCH64_EMULATOR = ("qemu-aarch64",)
"""``emulator`` of :func:`run_harness` for :func:`build_aarch64`'s static executables."""

_PACKAGES = {
    "cc": "gcc", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "qemu-aarch64": "qemu-user",
    "arm-none-eabi-gcc": "gcc-arm-none-eabi", "arm-none-eabi-size": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
}
CORTEX_M4_DIR = Path(__file__).with_name("cortex_m4")
"""The Cortex-M4 support files: ``startup.c``, ``mcu.h``, ``mcu_main.c``, ``mps2_an386.ld``."""
# ISO C (no fused multiply-adds, see export_c), hard-float ABI on the M4's single-precision FPU,
# freestanding (GCC's own stdint.h: no C library needed)
CORTEX_M4_FLAGS = ("-std=c99", "-O2", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                   "-ffreestanding", "-Wall", "-Wextra")
"""Compiler flags of every Cortex-M4 object."""
_QEMU_M4 = ("-M", "mps2-an386", "-nographic", "-semihosting-config", "enable=on,target=native", "-icount", "shift=7")
_IMAGE_LINE = re.compile(r"^onebit: image (\d+) instructions (\d+) stack (\d+)$", re.M)
_DONE_LINE = re.compile(r"^onebit: done (\d+)$", re.M)


class ToolchainError(RuntimeError):
    """A build failed; the message holds the command and the compiler's output."""


class MissingToolError(ToolchainError):
    """A compiler or emulator is not on ``PATH``; the message names the package to install."""

    def __init__(self, tool: str):
        package = _PACKAGES.get(tool)
        how = f"apt-get install -y {package}" if package else f"install {tool}"
        super().__init__(f"{tool} not found on PATH: {how} (every target's tools: {APT_INSTALL})")
        self.tool = tool


class HarnessError(RuntimeError):
    """A harness program failed (non-zero exit, time-out or malformed output)."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message + (f"\n{stderr.strip()}" if stderr.strip() else ""))
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class HeaderInfo:
    """The sizes an exported ``NAME.h`` defines."""

    name: str
    input_size: int
    output_size: int
    input_is_u8: bool
    arena_bytes: int

    @property
    def input_dtype(self) -> np.dtype:
        """Element type of the harness input: little-endian uint8 or float32."""
        return np.dtype(np.uint8) if self.input_is_u8 else np.dtype("<f4")


@dataclass
class CortexM4Result:
    """What :func:`run_cortex_m4` measured.

    Attributes:
        outputs: float32 ``(N, NAME_OUTPUT_SIZE)``.
        instructions: int64 ``(N,)``: instructions executed by ``NAME_predict`` on each image
            (see the module docstring; an instruction count, not cycles).
        instructions_per_inference: the largest of ``instructions`` (0 without images).
        stack_bytes: the most stack ``NAME_predict`` used below its caller's stack pointer, over
            all images (0 without images).
    """

    outputs: np.ndarray
    instructions: np.ndarray
    instructions_per_inference: int
    stack_bytes: int


def require_tool(tool: str) -> str:
    """The path of ``tool`` on ``PATH``.

    Raises:
        MissingToolError: it is not installed (the message says how to install it).
    """
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(tool)
    return path


def header_info(directory: str | Path, name: str) -> HeaderInfo:
    """Parse the ``#define NAME_...`` sizes of ``directory/NAME.h``.

    Raises:
        ValueError: a size is missing.
    """
    path = Path(directory) / f"{name}.h"
    text = path.read_text()
    values = {}
    for key in ("INPUT_SIZE", "OUTPUT_SIZE", "INPUT_IS_U8", "ARENA_BYTES"):
        match = re.search(rf"^\s*#\s*define\s+{re.escape(name)}_{key}\s+\(?\s*(\d+)", text, re.M)
        if match is None:
            raise ValueError(f"{path} does not #define {name}_{key}")
        values[key] = int(match.group(1))
    return HeaderInfo(name, values["INPUT_SIZE"], values["OUTPUT_SIZE"], bool(values["INPUT_IS_U8"]),
                      values["ARENA_BYTES"])


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    """Run a build command; raise :class:`ToolchainError` with its output if it fails."""
    require_tool(command[0])
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise ToolchainError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{output}")


def _sources(directory: str | Path, name: str, *files: str) -> tuple[Path, list[str]]:
    directory = Path(directory).resolve()
    paths = [directory / f.format(name=name) for f in files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (write it with onebit.deploy.export_c.export_c)")
    return directory, [str(p) for p in paths]


def build_host(directory: str | Path, name: str, *, cc: str = "cc", flags: tuple[str, ...] = ("-O2",)) -> Path:
    """Compile ``NAME.c`` and ``NAME_main.c`` of ``directory`` for this machine.

    Runs ``cc -std=c99 FLAGS -Wall -Wextra NAME.c NAME_main.c -o directory/NAME`` (add
    ``"-Werror"`` to ``flags`` to fail on warnings).

    Returns:
        The executable, for :func:`run_harness`.

    Raises:
        MissingToolError: ``cc`` is not installed.
        ToolchainError: the compiler failed (its output is in the message).
    """
    directory, sources = _sources(directory, name, "{name}.c", "{name}_main.c")
    executable = directory / name
    _run([cc, "-std=c99", *flags, "-Wall", "-Wextra", *sources, "-o", str(executable)], f"building {name} for the host")
    return executable


def build_aarch64(directory: str | Path, name: str) -> Path:
    """Cross-compile ``NAME.c`` and ``NAME_main.c`` into a static aarch64 Linux executable.

    Runs ``aarch64-linux-gnu-gcc -std=c99 -O3 -static -Wall -Wextra NAME.c NAME_main.c -o
    directory/NAME.aarch64``; run it with ``run_harness(path, inputs, emulator=AARCH64_EMULATOR)``
    (static, so no ``-L /usr/aarch64-linux-gnu`` is needed).

    Raises:
        MissingToolError, ToolchainError: as :func:`build_host`.
    """
    directory, sources = _sources(directory, name, "{name}.c", "{name}_main.c")
    executable = directory / f"{name}.aarch64"
    _run(["aarch64-linux-gnu-gcc", "-std=c99", "-O3", "-static", "-Wall", "-Wextra", *sources, "-o", str(executable)],
         f"building {name} for aarch64")
    return executable


def _header_of(executable: Path, header: HeaderInfo | None) -> HeaderInfo:
    """``header``, else the ``NAME.h`` beside ``executable`` (NAME: its file name up to the
    first dot, as the ``build_*`` functions name their outputs)."""
    return header or header_info(executable.parent, executable.name.split(".")[0])


def _input_bytes(inputs: np.ndarray | bytes, header: HeaderInfo) -> bytes:
    """``inputs`` as the harness's stdin bytes; ``bytes`` pass unchanged (to test the protocol)."""
    if isinstance(inputs, (bytes, bytearray)):
        return bytes(inputs)
    inputs = np.asarray(inputs)
    rows = inputs.size if inputs.ndim == 1 else int(np.prod(inputs.shape[1:]))
    if inputs.ndim == 0 or rows % header.input_size or (inputs.ndim > 1 and rows != header.input_size):
        raise ValueError(f"inputs of shape {inputs.shape} are not images of {header.input_size} elements")
    if header.input_is_u8 and inputs.dtype != np.uint8 and (
            not np.issubdtype(inputs.dtype, np.integer) or (inputs.size and (inputs.min() < 0 or inputs.max() > 255))):
        raise ValueError(f"{header.name} takes uint8 pixels, got {inputs.dtype} inputs")
    return np.ascontiguousarray(inputs, dtype=header.input_dtype).tobytes()


def _outputs(data: bytes, header: HeaderInfo, images: int, program: str) -> np.ndarray:
    record = 4 * header.output_size
    if len(data) != images * record:
        raise HarnessError(f"{program} wrote {len(data)} bytes, expected {images} x {record}")
    return np.frombuffer(data, "<f4").astype(np.float32).reshape(images, header.output_size)


def run_harness(executable: str | Path, inputs: np.ndarray | bytes, *, emulator: Sequence[str] | None = None,
                header: HeaderInfo | None = None, timeout: float = 120.0) -> np.ndarray:
    """Run a host or aarch64 harness on ``inputs`` (stdin in, stdout out).

    Args:
        executable: from :func:`build_host` or :func:`build_aarch64`; its ``NAME.h`` (beside it)
            gives the sizes unless ``header`` is passed.
        inputs: images, any shape whose rows hold ``NAME_INPUT_SIZE`` elements (``(N, 1, 28,
            28)``, ``(N, 784)``, ...), uint8 values for a uint8 model, else cast to float32. Raw
            ``bytes`` are sent as they are.
        emulator: a command prefix, e.g. ``["qemu-aarch64"]`` (``["qemu-aarch64", "-L",
            "/usr/aarch64-linux-gnu"]`` for a dynamically linked program).

    Returns:
        float32 ``(N, NAME_OUTPUT_SIZE)``.

    Raises:
        HarnessError: the program exited non-zero (e.g. a truncated last image), timed out, or
            wrote the wrong number of bytes; ``returncode`` and ``stderr`` are attributes.
    """
    executable = Path(executable)
    header = _header_of(executable, header)
    data = _input_bytes(inputs, header)
    command = [*(emulator or []), str(executable.resolve())]
    require_tool(command[0])
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{executable.name} timed out after {timeout:g} s") from e
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise HarnessError(f"{executable.name} exited with status {done.returncode}", done.returncode, stderr)
    return _outputs(done.stdout, header, len(data) // (header.input_size * header.input_dtype.itemsize),
                    executable.name)


def _compile_network_m4(source: str, obj: str, name: str) -> None:
    _run(["arm-none-eabi-gcc", *CORTEX_M4_FLAGS, "-c", source, "-o", obj], f"compiling {name}.c for the Cortex-M4")


def build_cortex_m4(directory: str | Path, name: str) -> Path:
    """Build ``NAME.c`` with the package's startup code and semihosting harness into
    ``directory/NAME.elf`` for QEMU's ``mps2-an386`` (Cortex-M4F).

    Every object is compiled with :data:`CORTEX_M4_FLAGS` (``arm-none-eabi-gcc -std=c99 -O2
    -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -ffreestanding``) and linked
    with ``-nostdlib`` (libgcc only) by ``cortex_m4/mps2_an386.ld``: code and constants in the
    4 MiB at 0 (the "flash"), a 64 KiB stack, ``.data`` and ``.bss`` in the RAM at 0x20000000.
    ``NAME_main.c`` is not used.

    Raises:
        MissingToolError, ToolchainError: as :func:`build_host`.
    """
    directory, (source,) = _sources(directory, name, "{name}.c")
    header_info(directory, name)  # fail early, with a clear message, on a malformed header
    elf = directory / f"{name}.elf"
    support = CORTEX_M4_DIR
    gcc = ["arm-none-eabi-gcc", *CORTEX_M4_FLAGS]
    with tempfile.TemporaryDirectory(prefix="onebit-m4-") as tmp:
        objects = [f"{tmp}/startup.o", f"{tmp}/mcu_main.o", f"{tmp}/{name}.o"]
        # the startup defines memcpy/memset: keep GCC from turning their loops into calls to themselves
        _run([*gcc, "-fno-tree-loop-distribute-patterns", "-I", str(support), "-c", str(support / "startup.c"),
              "-o", objects[0]], "compiling the Cortex-M4 startup")
        _run([*gcc, "-I", str(support), "-I", str(directory), f"-DONEBIT_MODEL={name}", f'-DONEBIT_HEADER="{name}.h"',
              "-c", str(support / "mcu_main.c"), "-o", objects[1]], f"compiling the Cortex-M4 harness for {name}")
        _compile_network_m4(source, objects[2], name)
        _run([*gcc, "-nostdlib", "-T", str(support / "mps2_an386.ld"), *objects, "-lgcc", "-o", str(elf)],
             f"linking {elf.name}")
    return elf


def run_cortex_m4(elf: str | Path, inputs: np.ndarray | bytes, *, header: HeaderInfo | None = None,
                  timeout: float = 300.0) -> CortexM4Result:
    """Run ``elf`` (from :func:`build_cortex_m4`) on ``inputs`` under
    ``qemu-system-arm -M mps2-an386 -nographic -semihosting-config enable=on,target=native
    -icount shift=7``, through host files in a temporary directory.

    Args:
        inputs: as :func:`run_harness`.
        header: the sizes, else read from the ``NAME.h`` beside ``elf``.
        timeout: seconds for the whole run.

    Raises:
        MissingToolError: ``qemu-system-arm`` is not installed.
        HarnessError: the program exited non-zero (1: I/O error or truncated input, 2: an
            inference outran the 32-bit timer, about 1.3e9 instructions, 3: a fault such as a
            stack overflow), timed out or reported malformed results.
    """
    elf = Path(elf).resolve()
    header = _header_of(elf, header)
    data = _input_bytes(inputs, header)
    command = [require_tool("qemu-system-arm"), *_QEMU_M4, "-kernel", str(elf)]
    with tempfile.TemporaryDirectory(prefix="onebit-qemu-") as tmp:
        (Path(tmp) / "input.bin").write_bytes(data)
        try:
            done = subprocess.run(command, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"{elf.name} under QEMU timed out after {timeout:g} s") from e
        console = done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise HarnessError(f"{elf.name} under QEMU exited with status {done.returncode}", done.returncode, console)
        output_file = Path(tmp) / "output.bin"
        output = output_file.read_bytes() if output_file.exists() else b""
    images = len(data) // (header.input_size * header.input_dtype.itemsize)
    done_line = _DONE_LINE.search(console)
    lines = _IMAGE_LINE.findall(console)
    if done_line is None or int(done_line.group(1)) != images or len(lines) != images:
        raise HarnessError(f"{elf.name} did not report {images} images", done.returncode, console)
    measured = np.array([[int(v) for v in line[1:]] for line in lines], np.int64).reshape(images, 2)
    return CortexM4Result(_outputs(output, header, images, elf.name), measured[:, 0],
                          int(measured[:, 0].max(initial=0)), int(measured[:, 1].max(initial=0)))


def _section_sizes(path: str | Path) -> dict[str, int]:
    """Section name -> size in bytes (``arm-none-eabi-size -A``)."""
    command = [require_tool("arm-none-eabi-size"), "-A", "-d", str(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    sizes: dict[str, int] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].startswith(".") and fields[1].isdigit():
            sizes[fields[0]] = sizes.get(fields[0], 0) + int(fields[1])
    return sizes


def _total(sizes: dict[str, int], *prefixes: str) -> int:
    """Bytes of the sections named ``prefix`` or ``prefix.*`` for any of ``prefixes``."""
    return sum(size for section, size in sizes.items()
               if any(section == p or section.startswith(p + ".") for p in prefixes))


def size_report(elf: str | Path, directory: str | Path, name: str, *,
                result: CortexM4Result | None = None) -> dict[str, int | None]:
    """Flash, RAM, stack and instructions of a Cortex-M4 build.

    ``NAME.c`` is compiled alone with :data:`CORTEX_M4_FLAGS` to measure the network without the
    harness. Keys (bytes unless said otherwise):

    - ``weights_bytes``: the network's constants (``.rodata`` of ``NAME.o``): packed weights,
      thresholds, scales;
    - ``network_flash_bytes``: ``NAME.o``'s code + constants + initialized data;
    - ``network_ram_bytes``: ``NAME.o``'s ``.data`` + ``.bss`` (the arena and any static state);
    - ``arena_bytes``: ``NAME_ARENA_BYTES`` of the header;
    - ``flash_bytes``: the whole program's flash (vector table, startup, harness, network, libgcc:
      ``.text`` + ``.rodata`` + ``.ARM.exidx`` + ``.data``'s initial values);
    - ``ram_bytes``: the whole program's ``.data`` + ``.bss`` (the stack not included);
    - ``stack_bytes``: from ``result``, the most stack ``NAME_predict`` used (None without it);
    - ``instructions_per_inference``: from ``result``, the most instructions an image took (None
      without it; an instruction count, not cycles).

    Raises:
        MissingToolError, ToolchainError: as :func:`build_cortex_m4`.
    """
    directory, (source,) = _sources(directory, name, "{name}.c")
    with tempfile.TemporaryDirectory(prefix="onebit-m4-") as tmp:
        obj = Path(tmp) / f"{name}.o"
        _compile_network_m4(source, str(obj), name)
        network = _section_sizes(obj)
    program = _section_sizes(elf)
    return {
        "weights_bytes": _total(network, ".rodata"),
        "network_flash_bytes": _total(network, ".text", ".rodata", ".data"),
        "network_ram_bytes": _total(network, ".data", ".bss"),
        "arena_bytes": header_info(directory, name).arena_bytes,
        "flash_bytes": _total(program, ".text", ".rodata", ".ARM.exidx", ".data"),
        "ram_bytes": _total(program, ".data", ".bss"),
        "stack_bytes": result.stack_bytes if result is not None else None,
        "instructions_per_inference": result.instructions_per_inference if result is not None else None,
    }
