"""smtriton: build, push, deploy and call the SageMaker Triton image.

One command line (`smtriton`) with one subcommand per step, so that a person
at a terminal and CodeBuild (buildspec.yml) run the same code: there is one
way to build. Each subcommand lives in its own module and models its options
as one frozen dataclass, validated when it is built from the command line.
"""
