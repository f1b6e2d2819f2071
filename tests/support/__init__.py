"""What the tests share that is not a fixture: servers, load, stand-ins (hub, NVML, GPU libraries),
tiny models, hostile files, pages, the export CLI, the docs' examples."""
