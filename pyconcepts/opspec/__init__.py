"""What an op is, apart from how it is computed: its argument rules and result types, shared by
the compiled ops (:mod:`pyconcepts.ops`) and their pure-torch twins (:mod:`pyconcepts.reference`).

Both depend on this package and it on neither, so ``ops`` → ``reference`` is the only edge
between the two (an op falls back to its twin)."""
