"""The built-in data formats (chat, prompt/completion, Alpaca, ShareGPT, text) and file
readers (JSONL, plain text, CSV, Parquet)."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_data_formats(registry):
    from tunewright.plugins.formats import formats, readers

    for data_format in (
        formats.ChatFormat(),
        formats.PromptCompletionFormat(),
        formats.AlpacaFormat(),
        formats.ShareGPTFormat(),
        formats.TextFormat(),
    ):
        registry.add_format(data_format)
    for reader in (readers.JsonlReader(), readers.TextFileReader(), readers.CsvReader(), readers.ParquetReader()):
        registry.add_reader(reader)
