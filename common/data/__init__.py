"""Hospital data: the folder format (folders), hospitals' exported images (image_folder), the datasets
folders are made from (sources) and splitting them among hospitals (partition)."""
