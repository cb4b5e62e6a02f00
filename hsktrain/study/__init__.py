"""The studies: recipes over the training library that run a grid of arms (`hsktrain sweep`),
keep their results tables and write the reports (`hsktrain report`, `hsktrain compare`)."""
