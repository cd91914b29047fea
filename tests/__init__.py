"""ldmcore's test suite. A package, so that its shared harnesses (``tests.reliability``,
``tests.fuzz_targets``, ``tests.sd_fixtures``, ``tests.references``) import by one name from the
tests and from the benchmarks that run them at scale (``python -m benchmarks.reliability``)."""
