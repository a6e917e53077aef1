"""A support file of the fixture exercises: the grader copies the reference version over the student's."""

GREETING = "Hello"
