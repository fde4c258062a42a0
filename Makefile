# Thin aliases for the README commands.
.PHONY: setup test demo bench complexity clean
setup:
	bash scripts/bootstrap.sh
test:
	bash scripts/test.sh
demo:
	bash scripts/main_job.sh
complexity: setup
	.venv/bin/python -m sim2real_perception.model.complexity --preset paper cpu test
clean:
	rm -rf outputs build install log
