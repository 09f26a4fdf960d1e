"""The foundation every other room stands on: params (pydantic), paths, errors and the one-line CLI,
atomic writes and Parquet (io), locks, progress, row statuses, staging folders, safe names and URLs, and the
package-name grammar. It imports no other room of the core."""
