"""Bit-exactness of the packed kernels against float64 numpy references on ±1 data."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import skip_or_fail

from onebit.deploy import _threads
from onebit.deploy import kernels as K

BACKENDS = K.AVAILABLE_BACKENDS
RNG = np.random.default_rng(1234)


@pytest.fixture(params=["1 thread", "3 threads"])
def threads(request, monkeypatch):
    """Run a test on the calling thread alone, and with 3 threads at any problem size."""
    if request.param == "3 threads":
        monkeypatch.setattr(K, "_PARALLEL_MIN_WORDS", 0)
        monkeypatch.setattr(K, "_PACK_PARALLEL_MIN", 0)
        monkeypatch.setattr(K, "_num_threads", 3)


def signs(*shape: int) -> np.ndarray:
    return RNG.choice(np.array([-1.0, 1.0], np.float32), size=shape)


def sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def conv_reference(x: np.ndarray, w: np.ndarray, padding: int, stride: int) -> np.ndarray:
    """F.conv2d of NHWC ±1 input with (C_out, kh, kw, C_in) ±1 weights, zero padding,
    via an explicit im2col and a float64 matmul."""
    n, h, wd, c = x.shape
    c_out, kh, kw, _ = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    cols = np.empty((n, ho, wo, kh, kw, c))
    for dy in range(kh):
        for dx in range(kw):
            rows, columns = slice(dy, dy + stride * (ho - 1) + 1, stride), slice(dx, dx + stride * (wo - 1) + 1, stride)
            cols[:, :, :, dy, dx] = xp[:, rows, columns]
    return (cols.reshape(n * ho * wo, -1) @ w.reshape(c_out, -1).T.astype(np.float64)).reshape(n, ho, wo, c_out)


# ---------------------------------------------------------------------------- packing


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int32])
def test_pack_round_trip_and_layout(backend, k, dtype, threads):
    x = (RNG.standard_normal((7, k)) * 10).astype(dtype)  # 7 rows: uneven shares of 3 threads
    packed = K.pack_signs(x, backend=backend)
    assert packed.dtype == np.uint64 and packed.shape == (7, -(-k // 64))
    np.testing.assert_array_equal(K.unpack_signs(packed, k), sign(x))
    # element j -> word j // 64, bit j % 64; tail bits zero
    j = np.arange(64 * packed.shape[1])
    bits = (packed[:, j // 64] >> (j % 64).astype(np.uint64)) & np.uint64(1)
    np.testing.assert_array_equal(bits[:, :k], x >= 0)
    assert not bits[:, k:].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_zero_nan_and_axis(backend):
    x = np.array([[0.0, -0.0, np.nan, -1e-30, 1e-30, -np.inf]], np.float32)
    assert K.pack_signs(x, backend=backend)[0, 0] == 0b010011
    y = signs(2, 70, 3)
    packed = K.pack_signs(y, axis=1, backend=backend)
    assert packed.shape == (2, 2, 3) and packed.flags.c_contiguous
    np.testing.assert_array_equal(K.unpack_signs(packed, 70, axis=1), y)
    big = RNG.standard_normal((600, 1000)).astype(np.float32)  # large enough to thread
    np.testing.assert_array_equal(K.pack_signs(big, backend=backend), K.pack_signs(big, backend="numpy"))


# ---------------------------------------------------------------------------- GEMM

GEMM_SHAPES = [
    (2, 0, 3), (0, 5, 3), (1, 1, 1), (1, 784, 1024), (3, 63, 7), (3, 65, 33), (5, 1000, 40), (9, 784, 33), (4, 128, 64),
    (3, 2000, 17), (6, 4100, 40),  # 32 and 65 words: the AVX2 tile's byte counters flush every 31 words
    (5, 130, 57), (7, 300, 91),  # last panel with 25 and 27 columns: its second 16-column half partly masked
    (67, 1000, 131),  # row and column tails for every thread
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_binary_matmul_matches_float(backend, m, k, n, threads):
    a, b = signs(m, k), signs(n, k)
    expected = a.astype(np.float64) @ b.T.astype(np.float64)
    out = K.binary_matmul(K.pack_signs(a), K.pack_signs(b), k, backend=backend)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, expected)
    if backend != "numpy" and out.size:
        assert out.ctypes.data % 64 == 0  # vector stores never straddle cache lines


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 784, 33), (7, 130, 64), (2, 64, 5), (150, 300, 70)])
def test_pixel_matmul_is_exact(backend, m, k, n, threads):
    codes = np.random.default_rng(k).integers(0, 256, (m, k)).astype(np.uint8)
    codes[0, :] = 255  # the largest products
    w = K.pack_signs(signs(n, k))
    np.testing.assert_array_equal(K.sign_sums(w, k), K.unpack_signs(w, k).sum(axis=1))
    out = K.pixel_matmul_prepared(codes, K.prepare_pixel_weights(w, k), backend=backend)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, codes.astype(np.int64) @ K.unpack_signs(w, k).T.astype(np.int64))
    with pytest.raises(ValueError, match="uint8"):
        K.pixel_matmul_prepared(codes.astype(np.int16), K.prepare_pixel_weights(w, k))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 784, 33), (9, 130, 64), (6, 64, 100)])
def test_pixel_matmul_threshold_packs_the_comparison(backend, m, k, n, threads):
    """The fused epilogue (AVX512-VNNI) against the numpy comparison of the exact product, with
    thresholds on the products themselves (ties), at the int32 extremes, partial tiles and threads."""
    rng = np.random.default_rng(m + k + n)
    codes = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = K.pack_signs(signs(n, k))
    products = codes.astype(np.int64) @ K.unpack_signs(w, k).T.astype(np.int64)
    thresholds = products[rng.integers(0, m, n), np.arange(n)] + rng.integers(-1, 2, n)
    thresholds[:2] = [np.iinfo(np.int32).min, np.iinfo(np.int32).max][: min(n, 2)]
    flip = rng.random(n) < 0.4
    got = K.pixel_matmul_threshold(codes, K.prepare_pixel_weights(w, k), thresholds.astype(np.int32), flip,
                                   backend=backend)
    assert got.dtype == np.uint64 and got.shape == (m, -(-n // 64))
    np.testing.assert_array_equal(got, K.threshold_bits(products, thresholds, flip))


def test_pixel_matmul_float64_fallback_for_long_rows():
    k = 70_000  # 255 k >= 2**24: float32 partial sums would no longer be exact
    codes = np.full((1, k), 255, np.uint8)
    w = K.pack_signs(signs(2, k))
    out = K.pixel_matmul_prepared(codes, K.prepare_pixel_weights(w, k), backend="numpy")
    np.testing.assert_array_equal(out, codes.astype(np.int64) @ K.unpack_signs(w, k).T.astype(np.int64))


def test_concurrent_callers_share_the_thread_pool_safely(monkeypatch):
    """Parallel kernels launched from several Python threads at once share the helper
    threads and each get their exact result."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(K, "_PARALLEL_MIN_WORDS", 0)
    monkeypatch.setattr(K, "_num_threads", 3)
    a, b = signs(64, 1000), signs(256, 1000)
    ap, prepared = K.pack_signs(a), K.prepare_weights(K.pack_signs(b))
    expected = a.astype(np.float64) @ b.T
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: K.binary_matmul_prepared(ap, prepared, 1000), range(16)))
    for out in results:
        np.testing.assert_array_equal(out, expected)


@pytest.fixture
def needs_numba():
    """The thread pool serves the numba back ends only (skipped without numba, failed under CI)."""
    if K._nb is None:
        skip_or_fail("numba is not installed (pip install -e '.[fast]'); the thread pool serves its back ends only")


def _visit_worker():
    """A nogil worker for run_workers: every thread checks in and waits (a bounded spin) until
    ``wait_for`` threads have, so that every helper takes part, then counts its visits of each
    item."""
    from numba import njit

    fetch_add = K._nb._fetch_add

    @njit(nogil=True)
    def worker(counter, arrived, wait_for, visits):
        fetch_add(arrived, 1)
        spins = 0
        while fetch_add(arrived, 0) < wait_for and spins < 200_000_000:
            spins += 1
        item = fetch_add(counter, 1)
        while item < visits.shape[0]:
            visits[item] += 1
            item = fetch_add(counter, 1)

    return worker


@pytest.mark.usefixtures("needs_numba")
def test_run_workers_hands_out_every_item_once_across_threads():
    worker = _visit_worker()
    for nthreads in (1, 2, 4):
        visits, arrived = np.zeros(20_000, np.int64), np.zeros(1, np.int64)
        _threads.run_workers(nthreads, worker, arrived, nthreads, visits)
        assert arrived[0] == nthreads and (visits == 1).all()


@pytest.mark.usefixtures("needs_numba")
def test_run_workers_from_concurrent_callers_growing_a_fresh_pool(monkeypatch):
    """Callers asking for different thread counts at once, while the pool grows (it is replaced)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_threads, "_POOL", None)
    monkeypatch.setattr(_threads, "_POOL_SIZE", 0)
    worker = _visit_worker()

    def call(nthreads):  # no waiting for the helpers: callers compete for them
        visits, arrived = np.zeros(5_000, np.int64), np.zeros(1, np.int64)
        _threads.run_workers(nthreads, worker, arrived, 0, visits)
        return (visits == 1).all()

    with ThreadPoolExecutor(6) as callers:
        assert all(callers.map(call, [2, 3, 4, 5, 6, 7] * 3))


@pytest.mark.usefixtures("needs_numba")
def test_run_workers_raises_a_helpers_error_after_every_helper_stopped():
    import threading

    helper_failed = threading.Event()
    main = threading.get_ident()

    def worker(counter):
        if threading.get_ident() == main:
            assert helper_failed.wait(10)
        else:
            helper_failed.set()
            raise ArithmeticError("helper failed")

    with pytest.raises(ArithmeticError, match="helper failed"):
        _threads.run_workers(2, worker)


@pytest.mark.usefixtures("needs_numba")
def test_forked_child_gets_a_pool_of_its_own(monkeypatch):
    """The parent's pool threads do not exist in a forked child: its helpers must run there."""
    if not hasattr(os, "fork"):
        skip_or_fail("needs os.fork")
    worker = _visit_worker()
    _threads.run_workers(3, worker, np.zeros(1, np.int64), 0, np.zeros(10, np.int64))  # parent's pool exists
    pid = os.fork()
    if pid == 0:  # child: every helper must arrive, else the worker's bounded spin gives up
        import signal

        signal.alarm(60)  # a hang fails the test too
        visits, arrived = np.zeros(1000, np.int64), np.zeros(1, np.int64)
        _threads.run_workers(3, worker, arrived, 3, visits)
        os._exit(0 if arrived[0] == 3 and (visits == 1).all() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_run_tasks_returns_every_result_in_order_with_the_kernels_serial_inside(monkeypatch):
    import threading

    monkeypatch.setattr(K, "_num_threads", 4)
    barrier = threading.Barrier(3, timeout=10)  # three tasks at once: the pool runs the other two

    def task(i):
        def run():
            barrier.wait()
            return i, _threads.in_task(), K._threads_for(K._PARALLEL_MIN_WORDS), threading.get_ident()
        return run

    results = _threads.run_tasks([task(i) for i in range(3)])
    assert [r[:3] for r in results] == [(i, True, 1) for i in range(3)]
    assert len({r[3] for r in results}) == 3 and results[0][3] == threading.get_ident()
    assert not _threads.in_task() and K._threads_for(K._PARALLEL_MIN_WORDS) == 4


def test_run_tasks_runs_a_task_no_helper_started_on_the_calling_thread(monkeypatch):
    """With the pool's only thread busy, the second task must run on the caller, not be lost."""
    import threading

    release = threading.Event()
    monkeypatch.setattr(_threads, "_POOL", None)
    monkeypatch.setattr(_threads, "_POOL_SIZE", 0)
    [busy] = _threads._submit([(release.wait, (10,))])
    try:
        assert _threads.run_tasks([lambda: "first", lambda: threading.get_ident()]) == [
            "first", threading.get_ident()]
    finally:
        release.set()
        busy.result()


def test_run_tasks_raises_a_tasks_error():
    def fail():
        raise ArithmeticError("task failed")

    with pytest.raises(ArithmeticError, match="task failed"):
        _threads.run_tasks([lambda: 1, fail])


def test_thread_count_setting(monkeypatch):
    monkeypatch.setattr(K, "_num_threads", K.get_num_threads())  # restored after the test
    K.set_num_threads(3)
    assert K.get_num_threads() == 3 and K._threads_for(K._PARALLEL_MIN_WORDS) == 3 and K._threads_for(0) == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            K.set_num_threads(bad)
    monkeypatch.setenv("ONEBIT_NUM_THREADS", "5")
    assert K._default_threads() == 5
    monkeypatch.setenv("ONEBIT_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="ONEBIT_NUM_THREADS"):
        K._default_threads()


def test_prepared_weights_layout():
    b = signs(40, 100)
    packed = K.pack_signs(b)
    prepared = K.prepare_weights(packed)
    assert prepared.panels.shape == (2, 2, K.PANEL) and prepared.n == 40
    if K._nb is not None:
        assert K._nb.PANEL == K.PANEL  # the micro-kernel is generated for this width
    assert prepared.panels.ctypes.data % 64 == 0
    np.testing.assert_array_equal(prepared.rows(), packed)
    assert not prepared.panels[1, :, 8:].any()  # columns 40..63 are zero padding
    with pytest.raises(ValueError):
        K.PreparedWeights(prepared.panels, n=70)


def test_shape_checks():
    a = K.pack_signs(signs(2, 70))
    w = K.prepare_weights(K.pack_signs(signs(3, 70)))
    with pytest.raises(ValueError):
        K.binary_matmul_prepared(a, w, 140)
    with pytest.raises(ValueError):
        K.binary_matmul_prepared(a.astype(np.int64), w, 70)
    with pytest.raises(ValueError):
        K.binary_matmul_prepared(a, K.prepare_weights(K.pack_signs(signs(3, 10))), 70)
    with pytest.raises(ValueError):
        K.binary_matmul_prepared(a, w, 70, backend="cuda")
    conv_w = K.prepare_conv_weights(K.pack_signs(signs(4, 3, 3, 8)), 8)
    with pytest.raises(ValueError):
        K.binary_conv2d(K.pack_signs(signs(1, 1, 1, 8)), 8, conv_w, padding=0)
    with pytest.raises(ValueError):
        K.binary_conv2d(K.pack_signs(signs(1, 4, 4, 8)), 9, conv_w)
    with pytest.raises(ValueError):
        K.binary_maxpool2d(K.pack_signs(signs(1, 1, 4, 8)), 2, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,n", [(1, 65, 1), (3, 784, 33), (5, 100, 64), (7, 200, 130), (70, 1000, 100),
                                   (6, 130, 90)])
def test_threshold_epilogue(backend, m, k, n, threads):
    a, b = signs(m, k), signs(n, k)
    dots = a.astype(np.float64) @ b.T
    thresholds = RNG.integers(-k // 4, k // 4 + 1, size=n).astype(np.int32)
    thresholds[:2] = dots[0, :2]  # equality must count as >=
    flip = RNG.random(n) < 0.5
    bits = (dots >= thresholds) ^ flip
    prepared = K.prepare_weights(K.pack_signs(b))
    out = K.binary_matmul_threshold(K.pack_signs(a), prepared, k, thresholds, flip, backend=backend)
    assert out.dtype == np.uint64 and out.shape == (m, -(-n // 64))
    np.testing.assert_array_equal(K.unpack_signs(out, n), np.where(bits, 1, -1))
    np.testing.assert_array_equal(out, K.pack_signs(np.where(bits, 1.0, -1.0)))  # tail bits are 0
    # real thresholds act as their ceiling; huge ones saturate instead of wrapping around
    real = thresholds - 0.5
    real[-1:] = 1e12
    expected = K.pack_signs(np.where((dots >= real) ^ flip, 1.0, -1.0))
    out = K.binary_matmul_threshold(K.pack_signs(a), prepared, k, real, flip, backend=backend)
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------- conv / pool


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n,h,w,c_in,c_out,kernel,padding,stride",
    [
        (2, 5, 6, 64, 64, 3, 1, 1),
        (1, 7, 4, 70, 33, 3, 1, 1),
        (1, 1, 1, 3, 5, 3, 1, 1),
        (2, 9, 9, 16, 32, 5, 2, 1),
        (1, 8, 7, 20, 9, 3, 1, 2),
        (1, 6, 6, 64, 8, 3, 0, 1),
    ],
)
def test_binary_conv2d_matches_zero_padded_reference(backend, n, h, w, c_in, c_out, kernel, padding, stride, threads):
    x, wt = signs(n, h, w, c_in), signs(c_out, kernel, kernel, c_in)
    prepared = K.prepare_conv_weights(K.pack_signs(wt), c_in)
    out = K.binary_conv2d(K.pack_signs(x), c_in, prepared, padding=padding, stride=stride, backend=backend)
    np.testing.assert_array_equal(out, conv_reference(x, wt, padding, stride))


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_conv2d_threshold(backend, threads):
    x, wt = signs(2, 6, 5, 16), signs(70, 5, 5, 16)
    prepared = K.prepare_conv_weights(K.pack_signs(wt), 16)
    conv = conv_reference(x, wt, padding=2, stride=1)
    thresholds = RNG.integers(-20, 21, size=70).astype(np.int32)
    flip = RNG.random(70) < 0.5
    out = K.binary_conv2d_threshold(K.pack_signs(x), 16, prepared, thresholds, flip, padding=2, backend=backend)
    assert out.shape == (2, 6, 5, 2)
    np.testing.assert_array_equal(out, K.pack_signs(np.where((conv >= thresholds) ^ flip, 1.0, -1.0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_conv_weights_serve_several_input_geometries(backend):
    """The border biases cached in the prepared weights are per input size, padding and stride."""
    wt = signs(20, 3, 3, 70)
    prepared = K.prepare_conv_weights(K.pack_signs(wt), 70)
    for h, w, padding, stride in [(5, 6, 1, 1), (7, 4, 1, 1), (5, 6, 0, 1), (5, 6, 1, 2), (5, 6, 1, 1)]:
        x = signs(2, h, w, 70)
        out = K.binary_conv2d(K.pack_signs(x), 70, prepared, padding=padding, stride=stride, backend=backend)
        np.testing.assert_array_equal(out, conv_reference(x, wt, padding, stride))


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (2, 1)])
def test_maxpool_is_or_of_signs(kernel, stride):
    x = signs(2, 7, 6, 70)
    out = K.binary_maxpool2d(K.pack_signs(x), kernel, stride)
    ho, wo = (7 - kernel) // stride + 1, (6 - kernel) // stride + 1
    windows = np.stack(
        [x[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
         for dy in range(kernel) for dx in range(kernel)]
    )  # fmt: skip
    np.testing.assert_array_equal(out, K.pack_signs(windows.max(axis=0)))


# ---------------------------------------------------------------------------- back-end switch


def _isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``onebit`` and ``onebit.deploy`` are bare
    namespace stubs (of this source tree), so only the kernel modules themselves are imported."""
    prelude = (
        "import sys, types, pathlib, numpy as np\n"
        f"root = pathlib.Path({str(K.__file__)!r}).parent\n"
        "for name, path in (('onebit', root.parent), ('onebit.deploy', root)):\n"
        "    mod = types.ModuleType(name); mod.__path__ = [str(path)]; sys.modules[name] = mod\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], env=dict(os.environ, **env), capture_output=True, text=True, timeout=120
    )


def _run_isolated(code: str, **env: str) -> str:
    """:func:`_isolated` ``code`` after ``import onebit.deploy.kernels as K``; its output."""
    result = _isolated("import onebit.deploy.kernels as K\n" + code, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_no_numba_env_var_forces_numpy_backend():
    code = (
        "assert K.AVAILABLE_BACKENDS == ('numpy',), K.AVAILABLE_BACKENDS\n"
        "assert 'numba' not in sys.modules\n"
        "a = K.pack_signs(np.ones((2, 70))); b = K.pack_signs(-np.ones((3, 70)))\n"
        "assert (K.binary_matmul(a, b, 70) == -70).all()\n"
        "print(K.DEFAULT_BACKEND)\n"
    )
    assert _run_isolated(code, ONEBIT_NO_NUMBA="1") == "numpy"


def test_kernels_do_not_import_torch():
    assert _run_isolated("print('torch' in sys.modules, K.DEFAULT_BACKEND)", ONEBIT_NO_NUMBA="0") == (
        f"False {K.DEFAULT_BACKEND}"
    )


def test_every_simd_tile_the_cpu_runs_is_available():
    """An AVX-512 CPU offers the AVX2 tile too, so one machine tests both code generators."""
    if K._nb is None:
        skip_or_fail("numba is not installed (pip install -e '.[fast]')")
    assert ("avx512" in BACKENDS) == K._nb.has_avx512_popcount()
    assert ("avx2" in BACKENDS) == K._nb.has_avx2()
    assert BACKENDS[-2:] == ("numba", "numpy") and K.DEFAULT_BACKEND == BACKENDS[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_onebit_backend_env_var_sets_the_default(backend):
    code = (
        "a, b = np.where(np.arange(6 * 300).reshape(6, 300) % 7 < 3, 1.0, -1.0), -np.ones((70, 300))\n"
        "out = K.binary_matmul(K.pack_signs(a), K.pack_signs(b), 300)\n"
        "assert (out == a @ b.T).all()\n"
        "print(K.DEFAULT_BACKEND)\n"
    )
    assert _run_isolated(code, ONEBIT_BACKEND=backend) == backend


def test_onebit_backend_env_var_names_an_available_back_end():
    result = _isolated("import onebit.deploy.kernels", ONEBIT_BACKEND="sse2")
    assert result.returncode != 0
    assert "ValueError: ONEBIT_BACKEND='sse2' is not available here (have " in result.stderr


def _real_reference(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """2 P - T with P and T added one float32 at a time, in input order (the definition)."""
    out = np.empty((x.shape[0], signs.shape[0]), np.float32)
    for m, row in enumerate(x):
        total = np.float32(0)
        for v in row:
            total = np.float32(total + v)
        for n, s in enumerate(signs):
            plus = np.float32(0)
            for v, w in zip(row, s):
                if w > 0:
                    plus = np.float32(plus + v)
            out[m, n] = np.float32(np.float32(2) * plus - total)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 63, 31), (5, 64, 33), (9, 130, 70)])
def test_real_matmul_sums_in_its_defined_order(backend, m, k, n):
    rng = np.random.default_rng(m * k * n)
    x = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-12, 12, (m, k)))).astype(np.float32)
    signs = np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.int8)
    prepared = K.prepare_real_weights(K.pack_signs(signs), k)
    got = K.real_matmul_prepared(x, prepared, backend=backend)
    assert got.dtype == np.float32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, _real_reference(x, signs))
    np.testing.assert_allclose(got, x.astype(np.float64) @ signs.T, rtol=1e-4, atol=1e-5 * np.abs(x).sum())


def test_real_matmul_threads_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((301, 784)).astype(np.float32)
    prepared = K.prepare_real_weights(K.pack_signs(rng.standard_normal((100, 784))), 784)
    monkeypatch.setattr(K, "_PARALLEL_MIN_WORDS", 0)
    serial = K.real_matmul_prepared(x, prepared, backend="numpy")
    for threads in (1, 3):
        monkeypatch.setattr(K, "_num_threads", threads)
        np.testing.assert_array_equal(K.real_matmul_prepared(x, prepared), serial)
    with pytest.raises(ValueError, match=r"shape \(M, 784\)"):
        K.real_matmul_prepared(x[:, :700], prepared)


def test_blas_threads_bounds_numpys_blas_inside_the_block_only():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    before = blas_threads()
    if not before:
        skip_or_fail("numpy is built without a BLAS threadpoolctl controls")
    with _threads.blas_threads(1):
        assert set(blas_threads().values()) == {1}
    assert blas_threads() == before
    with _threads.blas_threads(_threads._cpus()):  # the default: left alone
        assert blas_threads() == before
