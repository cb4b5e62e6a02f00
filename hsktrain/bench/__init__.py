"""The benchmarks: recipes over the training library that time its steps, builds and whole runs
(`hsktrain bench`), each beside the ceiling it is measured against."""
