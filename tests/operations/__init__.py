"""The command line, configuration, the process model, the route table's OpenAPI and the test
harness."""
