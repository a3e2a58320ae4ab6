#!/bin/sh
# Run once by the postgres image, on the first start with an empty data volume
# (its /docker-entrypoint-initdb.d hook). A shell script rather than plain SQL so
# that the role's password comes from the environment instead of this file.
#
# One application role owns one database per concern: predictions (vectorai),
# the MLflow tracking store (mlflow) and Luigi's task history (luigi).
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v app_password="$POSTGRES_PASSWORD" <<'EOSQL'
CREATE ROLE vectorai LOGIN PASSWORD :'app_password';
CREATE DATABASE vectorai OWNER vectorai;
CREATE DATABASE mlflow OWNER vectorai;
CREATE DATABASE luigi OWNER vectorai;
EOSQL
