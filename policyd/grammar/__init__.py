"""The rules language front ends: the lark grammar, DSL and YAML parsers, AST with spans."""
