# The README's two commands: `make run` and `make test`.
VENV    := .venv
STATE   ?= /run/core0-dev
PORT    ?= 6379
FLAVOUR ?= core
BASE    ?=
PYTEST_ARGS ?=
LINT_PATHS := core0 client tests bench qemu initramfs-builder

.PHONY: deps prefetch run test lint docs bench image vm clean

deps:
	bash scripts/install-deps.sh

## install everything, then run core0 in the foreground (supervisor + embedded redis + dispatcher)
run: deps
	$(VENV)/bin/core0 dev --state-dir $(STATE) --redis-port $(PORT)

## install everything, then run the whole test suite (what CI runs)
test: deps prefetch
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(VENV)/bin/core0 docs --check
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## download the node image's Debian packages and wheels into the build cache (the e2e tests
## build images from it; fetching while installing keeps network needs out of the test run)
prefetch: deps
	bash initramfs-builder/build.sh full --fetch-only

lint:
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

docs:
	$(VENV)/bin/core0 docs

bench: deps
	$(VENV)/bin/python bench/ping.py
	$(VENV)/bin/python bench/clone.py
	$(VENV)/bin/python bench/net.py
	$(VENV)/bin/python bench/boot.py
	$(VENV)/bin/python bench/resp_link.py
	$(VENV)/bin/python bench/spawn.py
	$(VENV)/bin/python bench/loop_ab.py
	$(VENV)/bin/python bench/idle.py
	$(VENV)/bin/python bench/front.py
	$(VENV)/bin/python bench/container.py
	$(VENV)/bin/python bench/kvm.py
	$(VENV)/bin/python bench/upgrade.py

## build the node image (kernel + initramfs + manifest) into build/image/ (FLAVOUR=core|full);
## FORMAT=iso also makes a hybrid BIOS/UEFI ISO of it, FORMAT=ipxe an iPXE script (BASE_URL=…),
## FORMAT=disk a raw BIOS/UEFI disk image with A/B slots and a persistent partition
FORMAT ?=
BASE_URL ?= http://boot.example/core0/
image: deps
	bash initramfs-builder/build.sh $(FLAVOUR) $(if $(BASE),--base $(BASE))
ifeq ($(FORMAT),iso)
	$(VENV)/bin/python initramfs-builder/media.py iso --flavour $(FLAVOUR)
else ifeq ($(FORMAT),ipxe)
	$(VENV)/bin/python initramfs-builder/media.py ipxe --flavour $(FLAVOUR) --base-url $(BASE_URL)
else ifeq ($(FORMAT),disk)
	$(VENV)/bin/python initramfs-builder/disk.py --flavour $(FLAVOUR)
else ifneq ($(FORMAT),)
	$(error FORMAT=$(FORMAT): iso, ipxe or disk)
endif

## boot it under qemu with the node's Redis forwarded to $(PORT) (see qemu/boot --help)
vm: image
	qemu/boot --flavour $(FLAVOUR) --redis-port $(PORT)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
