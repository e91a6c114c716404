module drain-bench/go-server

go 1.19
