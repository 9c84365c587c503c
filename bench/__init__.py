"""aiowt benchmarks: raw aioquic, aiowt and pywebtransport side by side (`python -m bench`)."""
