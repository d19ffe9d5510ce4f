# The three cmm-twin processes (mock MES, edge gateway, shop simulator) in one image; the compose
# service picks the script with its command, e.g. `python cmm_edge_gateway.py --data-dir /data`.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY cmm_twin ./cmm_twin
COPY cmm_edge_gateway.py mock_mes.py cmm_simulator.py ./

# A fixed non-root user. /data exists in the image and belongs to it, so a new named volume
# mounted there starts with that ownership (the gateway and the simulator share one volume and
# the same uid, which the gateway's read-lease check needs).
RUN groupadd --system --gid 10001 cmm \
    && useradd --system --uid 10001 --gid cmm --home-dir /app --no-create-home --shell /usr/sbin/nologin cmm \
    && mkdir -p /data/inbox \
    && chown -R cmm:cmm /data
USER 10001:10001

EXPOSE 8000 8080 4840

CMD ["python", "cmm_edge_gateway.py", "--help"]
