"""The measurements behind the benchmark commands (``showtell.bench``, ``bench_setup``, ``bench_caption``)."""
