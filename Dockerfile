# The three cmm-twin processes (mock MES, edge gateway, shop simulator) in one image, installed as
# the package with its console command; the compose service picks the program with its command,
# e.g. `cmm-twin gateway --data-dir /data`. Base images are pinned by digest (tag kept for reading).

# The OPC UA nodesets of the Machinery model: the same pinned fetch as `cmm-twin nodesets`
# (npm pack of one version, sha512 checked). Without the registry the fetch says so and the image
# has none: the gateway then serves OPC UA without the Machinery model (one warning at start-up).
FROM node:22.12.0-bookworm-slim@sha256:35531c52ce27b6575d69755c73e65d4468dba93a25644eed56dc12879cae9213 AS nodesets
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY cmm_twin/launcher/nodesets.sh /tmp/nodesets.sh
RUN bash /tmp/nodesets.sh /nodesets && mkdir -p /nodesets

FROM python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt /tmp/src/
RUN pip install --no-cache-dir -r /tmp/src/requirements.txt

# The package itself, from its source (not kept in the image): `cmm-twin` on PATH.
COPY pyproject.toml README.md LICENSE /tmp/src/
COPY cmm_twin /tmp/src/cmm_twin
RUN pip install --no-cache-dir --no-deps /tmp/src && rm -rf /tmp/src && cmm-twin --version

# Where the gateway looks by default: <sys.prefix>/share/cmm-twin/nodesets.
COPY --from=nodesets /nodesets /usr/local/share/cmm-twin/nodesets
COPY deploy/docker/entrypoint.sh /usr/local/bin/cmm-twin-entrypoint

# A fixed non-root user. /data exists in the image and belongs to it, so a new named volume
# mounted there starts with that ownership (the gateway and the simulator share one volume and
# the same uid, which the gateway's read-lease check needs).
RUN groupadd --system --gid 10001 cmm \
    && useradd --system --uid 10001 --gid cmm --home-dir /data --no-create-home --shell /usr/sbin/nologin cmm \
    && mkdir -p /data/inbox \
    && chown -R cmm:cmm /data
USER 10001:10001
WORKDIR /data

EXPOSE 8000 8080 4840

# Secrets may come as VAR_FILE (see the entry point); the command runs in its place.
ENTRYPOINT ["cmm-twin-entrypoint"]
CMD ["cmm-twin", "--help"]
