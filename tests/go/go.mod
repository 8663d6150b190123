module tunewright/tests/go

go 1.19
