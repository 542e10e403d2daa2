module keel-example

go 1.21

require keel v0.0.0

replace keel => ../../bindings/go
