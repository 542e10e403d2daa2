module keel

go 1.21
