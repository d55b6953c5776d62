# A learner's services in a container (the "services" profile): Python plus the kit's plumbing.
FROM python:3.11-slim
WORKDIR /kit
COPY pyproject.toml README.md ./
COPY grader grader
COPY services services
RUN pip install --no-cache-dir .
WORKDIR /submission
