module drain-tests/go-server

go 1.19
